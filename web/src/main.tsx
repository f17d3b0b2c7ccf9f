import { StrictMode, useEffect, useState, type MouseEvent, type ReactNode } from "react";
import { createRoot } from "react-dom/client";
import { I18nProvider, type Language, useI18n } from "./i18n";
import { RequireStaff, StaffProvider, useStaff } from "./staff";
import { PosPage } from "./pages/Pos";
import { CheckpointPage } from "./pages/Checkpoint";
import { MePage } from "./pages/Me";
import { OpsPage } from "./pages/Ops";
import "./styles.css";

export function navigate(path: string) {
  history.pushState(null, "", path);
  dispatchEvent(new PopStateEvent("popstate"));
}

function usePath(): string {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const update = () => setPath(location.pathname);
    addEventListener("popstate", update);
    return () => removeEventListener("popstate", update);
  }, []);
  return path.replace(/\/+$/, "") || "/";
}

function Link({ to, children, current }: { to: string; children: ReactNode; current?: boolean }) {
  const onClick = (event: MouseEvent) => {
    if (event.metaKey || event.ctrlKey || event.shiftKey) return;
    event.preventDefault();
    navigate(to);
  };
  return <a href={to} onClick={onClick} aria-current={current ? "page" : undefined}>{children}</a>;
}

const ROUTES = [
  { path: "/pos", label: "pos", roles: ["bartender", "admin"] },
  { path: "/checkpoint", label: "checkpoint", roles: ["cashier", "admin"] },
  { path: "/me", label: "me", roles: null },
  { path: "/ops", label: "ops", roles: ["admin"] },
] as const;

function Shell() {
  const { t, language, setLanguage } = useI18n();
  const { staff, signOut } = useStaff();
  const path = usePath();
  const route = ROUTES.find((candidate) => candidate.path === path);
  let page: ReactNode;
  if (path === "/pos") page = <PosPage />;
  else if (path === "/checkpoint") page = <CheckpointPage />;
  else if (path === "/me") page = <MePage />;
  else if (path === "/ops") page = <OpsPage />;
  else page = <Home />;
  if (route?.roles) page = <RequireStaff roles={[...route.roles]}>{page}</RequireStaff>;
  return (
    <>
      <header className="top">
        <Link to="/"><span className="brand">{t("appTitle")}</span></Link>
        <nav aria-label="main">
          {ROUTES.map((candidate) => (
            <Link key={candidate.path} to={candidate.path} current={candidate.path === path}>{t(candidate.label)}</Link>
          ))}
        </nav>
        <div className="session">
          {staff && route?.roles && (
            <>
              <span className="who">{t("signedInAs", { name: staff.name })}</span>
              <button type="button" className="small" onClick={() => void signOut()}>{t("signOut")}</button>
            </>
          )}
          <label className="language">
            <span className="visually-hidden">{t("language")}</span>
            <select value={language} onChange={(event) => setLanguage(event.target.value as Language)} aria-label={t("language")}
              data-testid="language">
              <option value="en">English</option>
              <option value="cs">Čeština</option>
            </select>
          </label>
        </div>
      </header>
      <main>{page}</main>
    </>
  );
}

function Home() {
  const { t } = useI18n();
  return (
    <section className="panel home">
      <p>{t("homeIntro")}</p>
      <ul className="route-list">
        <li><Link to="/pos"><strong>{t("pos")}</strong> {t("homePos")}</Link></li>
        <li><Link to="/checkpoint"><strong>{t("checkpoint")}</strong> {t("homeCheckpoint")}</Link></li>
        <li><Link to="/me"><strong>{t("me")}</strong> {t("homeMe")}</Link></li>
        <li><Link to="/ops"><strong>{t("ops")}</strong> {t("homeOps")}</Link></li>
      </ul>
    </section>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <I18nProvider>
      <StaffProvider>
        <Shell />
      </StaffProvider>
    </I18nProvider>
  </StrictMode>,
);
