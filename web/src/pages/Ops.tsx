// /ops: the operator's screen with what exists today: health, and card lookup, block and unblock
// (admin-cards). Alerts, charts and settlement numbers need the admin-alerts and reports
// functions, which do not exist yet; they are left out rather than faked.
import { type FormEvent, useCallback, useEffect, useState } from "react";
import { type ErrorBody, formatMoney, invoke, newKey } from "../api";
import { useI18n } from "../i18n";
import { describeError } from "../messages";
import { useStaff } from "../staff";

interface Health {
  status: string;
  database: string;
  migration?: string;
}

export function OpsPage() {
  const { t, language } = useI18n();
  const { staff } = useStaff();
  const [health, setHealth] = useState<{ state: "ok"; body: Health } | { state: "down" } | { state: "no_answer" } | null>(null);
  const [cardId, setCardId] = useState("");
  const [reason, setReason] = useState("");
  const [card, setCard] = useState<{ card_id: string; status: string; balance_cents: number } | null>(null);
  const [message, setMessage] = useState<{ kind: "ok" | "error"; text: string } | null>(null);

  const checkHealth = useCallback(async () => {
    const result = await invoke<Health>("health", { method: "GET", timeoutMs: 5000 });
    if (result.kind === "ok") setHealth({ state: "ok", body: result.data });
    else setHealth(result.status === 503 ? { state: "down" } : { state: "no_answer" });
  }, []);

  useEffect(() => {
    void checkHealth();
    const timer = setInterval(() => void checkHealth(), 15_000);
    return () => clearInterval(timer);
  }, [checkHealth]);

  const showError = (error: ErrorBody) => setMessage({ kind: "error", text: describeError(t, error, language) });

  const lookUp = async (id = cardId.trim().toUpperCase()) => {
    const result = await invoke<{ card_id: string; status: string; balance_cents: number }>(
      `card-balance?card_id=${encodeURIComponent(id)}`,
      { method: "GET", token: staff?.token },
    );
    if (result.kind === "ok") {
      setCard(result.data);
      setMessage(null);
    } else {
      setCard(null);
      showError(result.error);
    }
  };

  const setStatus = async (action: "block" | "unblock") => {
    const id = cardId.trim().toUpperCase();
    const result = await invoke<{ card_id: string; status: string }>("admin-cards", {
      token: staff?.token,
      body: { action, card_id: id, ...(action === "block" && reason.trim() ? { reason: reason.trim() } : {}), client_request_id: newKey(action) },
    });
    if (result.kind === "ok") {
      setMessage({ kind: "ok", text: t("blocked", { card: id, status: result.data.status ?? action }) });
      await lookUp(id);
    } else {
      showError(result.error);
    }
  };

  const submit = (event: FormEvent) => {
    event.preventDefault();
    void lookUp();
  };

  return (
    <div className="ops">
      <section className="panel" aria-labelledby="health-title">
        <h2 id="health-title">{t("health")}</h2>
        <div data-testid="health" data-state={health?.state ?? "loading"}>
          {health?.state === "ok" && <p className="message success">{t("healthOk", { migration: health.body.migration ?? "?" })}</p>}
          {health?.state === "down" && <p className="message error" role="alert">{t("healthDown")}</p>}
          {health?.state === "no_answer" && <p className="message error" role="alert">{t("healthNoAnswer")}</p>}
        </div>
        <button type="button" className="small" onClick={() => void checkHealth()}>{t("refresh")}</button>
      </section>
      <section className="panel" aria-labelledby="cards-title">
        <h2 id="cards-title">{t("cardAdmin")}</h2>
        <form className="form" onSubmit={submit}>
          <label>{t("cardId")}<input value={cardId} onChange={(event) => setCardId(event.target.value)} required
            data-testid="ops-card" /></label>
          <label>{t("reason")}<input value={reason} onChange={(event) => setReason(event.target.value)} maxLength={200} /></label>
          <div className="inline">
            <button type="submit" className="big">{t("lookUp")}</button>
            <button type="button" className="big" disabled={!cardId.trim()} onClick={() => void setStatus("block")}
              data-testid="ops-block">{t("block")}</button>
            <button type="button" className="big" disabled={!cardId.trim()} onClick={() => void setStatus("unblock")}
              data-testid="ops-unblock">{t("unblock")}</button>
          </div>
        </form>
        {card && (
          <p data-testid="ops-card-result">
            {card.card_id} · {t("cardStatus", { status: card.status })} · {formatMoney(card.balance_cents, "EUR", language)}
          </p>
        )}
        {message && <p className={`message ${message.kind === "ok" ? "success" : "error"}`} role="status">{message.text}</p>}
      </section>
    </div>
  );
}
