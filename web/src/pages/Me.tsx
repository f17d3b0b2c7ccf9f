// /me: a festival-goer enters card id and PIN, sees balance and history, and tops up online
// through Stripe Checkout by package. The PIN is sent as the x-card-pin header with the anon key.
import { type FormEvent, useCallback, useEffect, useState } from "react";
import { type ErrorBody, formatMoney, invoke, newKey } from "../api";
import { type MessageKey, useI18n } from "../i18n";
import { describeError } from "../messages";
import { usePackages } from "./Checkpoint";

interface Movement {
  at: string;
  kind: string;
  amount_cents: number;
  balance_after_cents: number;
  location?: string | null;
}

interface CardBalance {
  card_id: string;
  status: string;
  balance_cents: number;
  movements: Movement[];
}

const CARD_KEY = "me-card";

function readStoredCard(): { cardId: string; pin: string } | null {
  try {
    return JSON.parse(sessionStorage.getItem(CARD_KEY) ?? "null");
  } catch {
    return null;
  }
}

export function MePage() {
  const { t, language } = useI18n();
  const catalogue = usePackages();
  const currency = catalogue?.currency ?? "EUR";
  const money = (cents: number) => formatMoney(cents, currency, language);
  const stored = readStoredCard();
  const [cardId, setCardId] = useState(stored?.cardId ?? "");
  const [pin, setPin] = useState(stored?.pin ?? "");
  const [card, setCard] = useState<CardBalance | null>(null);
  const [error, setError] = useState<ErrorBody | null>(null);
  const [loading, setLoading] = useState(false);
  const [redirecting, setRedirecting] = useState(false);
  const returned = new URLSearchParams(location.search).get("topup");

  const load = useCallback(async (id: string, cardPin: string): Promise<CardBalance | null> => {
    setLoading(true);
    const result = await invoke<CardBalance>(`card-balance?card_id=${encodeURIComponent(id)}`, {
      method: "GET",
      headers: { "x-card-pin": cardPin },
    });
    setLoading(false);
    if (result.kind === "ok") {
      setCard(result.data);
      setError(null);
      sessionStorage.setItem(CARD_KEY, JSON.stringify({ cardId: id, pin: cardPin }));
      return result.data;
    }
    setCard(null);
    setError(result.error);
    if (result.kind === "refused") sessionStorage.removeItem(CARD_KEY);
    return null;
  }, []);

  // Back from Stripe Checkout: show the card again and follow the balance until the webhook lands.
  useEffect(() => {
    if (!stored) return;
    let cancelled = false;
    void (async () => {
      const first = await load(stored.cardId, stored.pin);
      if (returned !== "success" || !first) return;
      const before = Number(sessionStorage.getItem("me-balance-before") ?? first.balance_cents);
      for (let poll = 0; poll < 30 && !cancelled; poll++) {
        await new Promise((resolve) => setTimeout(resolve, 2000));
        const next = await load(stored.cardId, stored.pin);
        if (!next || next.balance_cents !== before) break;
      }
    })();
    return () => {
      cancelled = true;
    };
  }, []); // eslint-disable-line react-hooks/exhaustive-deps

  const submit = (event: FormEvent) => {
    event.preventDefault();
    void load(cardId.trim().toUpperCase(), pin.trim());
  };

  const topUp = async (packageCode: string) => {
    if (!card) return;
    // One key per card and package until we come back: a double tap opens the same session.
    const keyName = `topup-key:${card.card_id}:${packageCode}`;
    const key = sessionStorage.getItem(keyName) ?? newKey("topup");
    sessionStorage.setItem(keyName, key);
    sessionStorage.setItem("me-balance-before", String(card.balance_cents));
    setRedirecting(true);
    const base = `${location.origin}/me`;
    const result = await invoke<{ checkout_url: string }>("create-checkout-session", {
      body: {
        card_id: card.card_id,
        package_code: packageCode,
        success_url: `${base}?topup=success`,
        cancel_url: `${base}?topup=cancel`,
        client_request_id: key,
      },
    });
    if (result.kind === "ok") {
      sessionStorage.removeItem(keyName);
      location.assign(result.data.checkout_url);
      return;
    }
    setRedirecting(false);
    setError(result.error);
  };

  const kindLabel = (kind: string) => {
    const key = `kind_${kind}` as MessageKey;
    const label = t(key);
    return label === key ? kind : label;
  };

  return (
    <div className="me">
      <section className="panel" aria-labelledby="me-title">
        <h2 id="me-title">{t("me")}</h2>
        {returned === "success" && <p className="message info" data-testid="topup-returned">{t("topupReturned")}</p>}
        {returned === "cancel" && <p className="message notice">{t("topupCancelled")}</p>}
        <form className="form inline-form" onSubmit={submit}>
          <label>{t("cardId")}<input value={cardId} onChange={(event) => setCardId(event.target.value)} required
            autoComplete="off" data-testid="me-card" /></label>
          <label>{t("pin")}<input value={pin} onChange={(event) => setPin(event.target.value)} required type="password"
            inputMode="numeric" autoComplete="off" data-testid="me-pin" /></label>
          <button type="submit" className="primary big" disabled={loading} data-testid="me-submit">{t("showBalance")}</button>
        </form>
        {error && <p className="message error" role="alert" data-testid="me-error" data-code={error.code}>
          {describeError(t, error, language, currency)}
        </p>}
      </section>
      {card && (
        <>
          <section className="panel" aria-labelledby="balance-title">
            <h2 id="balance-title">{t("balance")} · {card.card_id}</h2>
            <p className="balance" data-testid="me-balance" data-cents={card.balance_cents}>{money(card.balance_cents)}</p>
            {card.status !== "active" && <p className="message error">{t("cardStatus", { status: card.status })}</p>}
          </section>
          <section className="panel" aria-labelledby="topup-title">
            <h2 id="topup-title">{t("topUpOnline")}</h2>
            <div className="choice-grid">
              {catalogue?.packages.map((item) => (
                <button key={item.package_code} type="button" className="choice" disabled={redirecting || card.status !== "active"}
                  data-testid={`me-package-${item.package_code}`} onClick={() => void topUp(item.package_code)}>
                  <strong>{item.name}</strong>
                  <span>{t("payWithStripe", { price: money(item.price_cents), credit: money(item.price_cents + item.bonus_cents) })}</span>
                </button>
              ))}
            </div>
            {redirecting && <p className="hint">{t("redirecting")}</p>}
          </section>
          <section className="panel" aria-labelledby="history-title">
            <h2 id="history-title">{t("history")}</h2>
            {card.movements.length === 0 ? <p className="hint">{t("noHistory")}</p> : (
              <table className="history" data-testid="me-history">
                <tbody>
                  {card.movements.map((movement, index) => (
                    <tr key={index}>
                      <td>{new Date(movement.at).toLocaleString(language === "cs" ? "cs-CZ" : "en-GB", { dateStyle: "short", timeStyle: "short" })}</td>
                      <td>{kindLabel(movement.kind)}{movement.location ? ` · ${movement.location}` : ""}</td>
                      <td className={`amount ${movement.amount_cents < 0 ? "minus" : "plus"}`}>{money(movement.amount_cents)}</td>
                      <td className="after">{money(movement.balance_after_cents)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </section>
        </>
      )}
    </div>
  );
}
