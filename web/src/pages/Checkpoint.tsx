// /checkpoint: a cashier tops a card up by amount or by package, paid in cash or by card terminal.
// One key per top-up, resent unchanged until the server answers, so a retry never credits twice.
import { type FormEvent, useEffect, useRef, useState } from "react";
import { type ErrorBody, formatMoney, invoke, newKey } from "../api";
import { useI18n } from "../i18n";
import { describeError } from "../messages";
import { useStaff } from "../staff";

export interface TopupPackage {
  package_code: string;
  name: string;
  price_cents: number;
  bonus_cents: number;
}

interface RechargeResult {
  card_id: string;
  amount_cents: number;
  bonus_cents?: number;
  new_balance_cents: number;
}

const CHECKPOINT_KEY = "checkpoint-id";
const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

export function usePackages() {
  const [packages, setPackages] = useState<{ currency: string; packages: TopupPackage[] } | null>(null);
  useEffect(() => {
    void invoke<{ currency: string; packages: TopupPackage[] }>("topup-packages", { method: "GET" }).then((result) => {
      if (result.kind === "ok") setPackages(result.data);
    });
  }, []);
  return packages;
}

export function CheckpointPage() {
  const { t, language } = useI18n();
  const { staff } = useStaff();
  const catalogue = usePackages();
  const currency = catalogue?.currency ?? "EUR";
  const money = (cents: number) => formatMoney(cents, currency, language);
  const [checkpointId, setCheckpointId] = useState(() => localStorage.getItem(CHECKPOINT_KEY) ?? "entrance");
  const [cardId, setCardId] = useState("");
  const [amount, setAmount] = useState("");
  const [packageCode, setPackageCode] = useState<string | null>(null);
  const [method, setMethod] = useState<"cash" | "card">("cash");
  const [state, setState] = useState<
    | { kind: "idle" }
    | { kind: "sending"; attempts: number }
    | { kind: "done"; result: RechargeResult }
    | { kind: "refused"; error: ErrorBody }
    | { kind: "invalid" }
  >({ kind: "idle" });
  const mounted = useRef(true);
  useEffect(() => () => {
    mounted.current = false;
  }, []);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    if (state.kind === "sending") return;
    const amountCents = Math.round(Number(amount.replace(",", ".")) * 100);
    if (!packageCode && !(Number.isInteger(amountCents) && amountCents > 0)) {
      setState({ kind: "invalid" });
      return;
    }
    localStorage.setItem(CHECKPOINT_KEY, checkpointId);
    const body = {
      card_id: cardId.trim().toUpperCase(),
      ...(packageCode ? { package_code: packageCode } : { amount_cents: amountCents }),
      payment_method: method,
      checkpoint_id: checkpointId.trim(),
      client_request_id: newKey("checkpoint"),
    };
    for (let attempts = 1; mounted.current; attempts++) {
      setState({ kind: "sending", attempts });
      const result = await invoke<RechargeResult>("process-checkpoint-recharge", { token: staff?.token, body, timeoutMs: 10_000 });
      if (result.kind === "no_answer") {
        await sleep(Math.min(1000 * attempts, 5000));
        continue;
      }
      if (result.kind === "ok") {
        setState({ kind: "done", result: result.data });
        setAmount("");
        setPackageCode(null);
      } else {
        setState({ kind: "refused", error: result.error });
      }
      return;
    }
  };

  return (
    <section className="panel checkpoint" aria-labelledby="checkpoint-title">
      <h2 id="checkpoint-title">{t("checkpoint")}</h2>
      <form className="form" onSubmit={submit}>
        <label>{t("checkpointId")}<input value={checkpointId} onChange={(event) => setCheckpointId(event.target.value)}
          data-testid="checkpoint-id" required /></label>
        <label>{t("cardId")}<input value={cardId} onChange={(event) => setCardId(event.target.value)} required autoComplete="off"
          placeholder={t("cardPlaceholder")} data-testid="topup-card" /></label>
        <fieldset>
          <legend>{t("packages")}</legend>
          <div className="choice-grid">
            {catalogue?.packages.map((item) => (
              <button key={item.package_code} type="button" className={`choice ${packageCode === item.package_code ? "selected" : ""}`}
                aria-pressed={packageCode === item.package_code} data-testid={`package-${item.package_code}`}
                onClick={() => {
                  setPackageCode(packageCode === item.package_code ? null : item.package_code);
                  setAmount("");
                }}>
                <strong>{t("packageLabel", { name: item.name, price: money(item.price_cents) })}</strong>
                {item.bonus_cents > 0 && <span className="tag">{t("packageBonus", { bonus: money(item.bonus_cents) })}</span>}
              </button>
            ))}
          </div>
        </fieldset>
        <label>{t("amountEuro", { currency })}
          <input inputMode="decimal" value={amount} data-testid="topup-amount" onChange={(event) => {
            setAmount(event.target.value);
            setPackageCode(null);
          }} />
        </label>
        <fieldset>
          <legend>{t("method")}</legend>
          <div className="inline">
            <label className="radio"><input type="radio" name="method" checked={method === "cash"} onChange={() => setMethod("cash")}
              data-testid="method-cash" /> {t("cash")}</label>
            <label className="radio"><input type="radio" name="method" checked={method === "card"} onChange={() => setMethod("card")}
              data-testid="method-card" /> {t("card")}</label>
          </div>
        </fieldset>
        <button type="submit" className="primary big" disabled={state.kind === "sending"} data-testid="topup-submit">{t("topUp")}</button>
      </form>
      <div aria-live="polite" data-testid="topup-status" data-state={state.kind}>
        {state.kind === "sending" && state.attempts > 1 && <p className="message warning">{t("networkError")}</p>}
        {state.kind === "invalid" && <p className="message error" role="alert">{t("chooseAmount")}</p>}
        {state.kind === "refused" && (
          <p className="message error" role="alert" data-code={state.error.code}>{describeError(t, state.error, language, currency)}</p>
        )}
        {state.kind === "done" && (
          <div className="message success" data-testid="topup-done">
            <p>{t("toppedUp", { amount: money(state.result.amount_cents + (state.result.bonus_cents ?? 0)) })} · {state.result.card_id}</p>
            <p className="balance-label">{t("newBalance")}</p>
            <p className="balance" data-testid="topup-balance" data-cents={state.result.new_balance_cents}>
              {money(state.result.new_balance_cents)}
            </p>
          </div>
        )}
      </div>
    </section>
  );
}
