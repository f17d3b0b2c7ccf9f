// Who is signed in. On a hosted project staff sign in with Supabase Auth (email and password);
// on the local stack, where no Auth server runs, they pick one of the demo staff that
// /local-config.json lists (served only by `npm start` and the tests).
import { createContext, useContext, useEffect, useState, type FormEvent, type ReactNode } from "react";
import { supabase } from "./api";
import { type DemoStaff, type LocalConfig, loadLocalConfig } from "./config";
import { useI18n } from "./i18n";

export interface StaffSession {
  name: string;
  role: DemoStaff["role"] | null;
  token: string;
  source: "demo" | "auth";
}

interface StaffState {
  staff: StaffSession | null;
  localConfig: LocalConfig | null;
  ready: boolean;
  signInDemo: (member: DemoStaff) => void;
  signOut: () => Promise<void>;
}

const StaffContext = createContext<StaffState | null>(null);
const DEMO_KEY = "demo-staff-user-id";

export function StaffProvider({ children }: { children: ReactNode }) {
  const [staff, setStaff] = useState<StaffSession | null>(null);
  const [localConfig, setLocalConfig] = useState<LocalConfig | null>(null);
  const [ready, setReady] = useState(false);

  useEffect(() => {
    let cancelled = false;
    (async () => {
      const config = await loadLocalConfig();
      if (cancelled) return;
      setLocalConfig(config);
      const demoId = localStorage.getItem(DEMO_KEY);
      const member = config?.demo_staff.find((candidate) => candidate.user_id === demoId);
      if (member) {
        setStaff({ name: member.name, role: member.role, token: member.token, source: "demo" });
      } else if (!config) {
        const { data } = await supabase.auth.getSession();
        if (data.session && !cancelled) {
          setStaff({ name: data.session.user.email ?? data.session.user.id, role: null, token: data.session.access_token, source: "auth" });
        }
      }
      setReady(true);
    })();
    const { data: listener } = supabase.auth.onAuthStateChange((_event, session) => {
      if (localStorage.getItem(DEMO_KEY)) return;
      setStaff(session ? { name: session.user.email ?? session.user.id, role: null, token: session.access_token, source: "auth" } : null);
    });
    return () => {
      cancelled = true;
      listener.subscription.unsubscribe();
    };
  }, []);

  const signInDemo = (member: DemoStaff) => {
    localStorage.setItem(DEMO_KEY, member.user_id);
    setStaff({ name: member.name, role: member.role, token: member.token, source: "demo" });
  };
  const signOut = async () => {
    localStorage.removeItem(DEMO_KEY);
    if (staff?.source === "auth") await supabase.auth.signOut();
    setStaff(null);
  };
  return (
    <StaffContext.Provider value={{ staff, localConfig, ready, signInDemo, signOut }}>{children}</StaffContext.Provider>
  );
}

export function useStaff(): StaffState {
  const context = useContext(StaffContext);
  if (!context) throw new Error("useStaff outside StaffProvider");
  return context;
}

/** Renders `children` for a signed-in staff member, the sign-in screen otherwise. */
export function RequireStaff({ roles, children }: { roles: DemoStaff["role"][]; children: ReactNode }) {
  const { staff, ready } = useStaff();
  if (!ready) return null;
  // A demo staff member's role is known here: a bartender opening /checkpoint picks someone else.
  // With Supabase Auth the role lives in the database, and the procedures refuse (403) on their own.
  if (!staff || (staff.role && !roles.includes(staff.role))) return <SignIn roles={roles} />;
  return <>{children}</>;
}

function SignIn({ roles }: { roles: DemoStaff["role"][] }) {
  const { t } = useI18n();
  const { localConfig, signInDemo } = useStaff();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [message, setMessage] = useState("");

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    const { error } = await supabase.auth.signInWithPassword({ email, password });
    setMessage(error ? t("signInFailed", { message: error.message }) : "");
  };

  return (
    <section className="panel sign-in" aria-labelledby="sign-in-title">
      <h2 id="sign-in-title">{t("signInTitle")}</h2>
      {localConfig
        ? (
          <>
            <p className="hint">{t("signInDemo")}</p>
            <div className="button-list">
              {localConfig.demo_staff.filter((member) => roles.includes(member.role)).map((member) => (
                <button type="button" key={member.user_id} className="big" data-testid={`demo-${member.role}`}
                  onClick={() => signInDemo(member)}>
                  {t("signInAs", { name: member.name })} <span className="tag">{t(`role_${member.role}`)}</span>
                </button>
              ))}
            </div>
          </>
        )
        : (
          <form onSubmit={submit} className="form">
            <label>{t("email")}<input type="email" autoComplete="username" required value={email}
              onChange={(event) => setEmail(event.target.value)} /></label>
            <label>{t("password")}<input type="password" autoComplete="current-password" required value={password}
              onChange={(event) => setPassword(event.target.value)} /></label>
            <button type="submit" className="primary big">{t("signIn")}</button>
            {message && <p role="alert" className="message error">{message}</p>}
          </form>
        )}
    </section>
  );
}
