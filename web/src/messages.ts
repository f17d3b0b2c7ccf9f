// A human sentence for each refusal the functions can answer (codes from docs/architecture.md §6).
import { type ErrorBody, formatMoney } from "./api";
import type { MessageKey } from "./i18n";

type Translate = (key: MessageKey, values?: Record<string, string | number>) => string;

export function describeError(t: Translate, error: ErrorBody, language: string, currency = "EUR"): string {
  const money = (value: unknown) => formatMoney(Number(value ?? 0), currency, language);
  switch (error.code) {
    case "insufficient_funds":
      return t("insufficientFunds", { balance: money(error.balance_cents), total: money(error.total_cents) });
    case "card_blocked":
    case "card_replaced":
      return t("cardBlocked");
    case "card_not_found":
      return t("cardNotFound", { card: String(error.card_id ?? "") });
    case "product_not_found":
      return t("productNotFound");
    case "price_mismatch":
      return t("priceMismatch", { total: money(error.total_cents) });
    case "limit_exceeded":
      return t("limitExceeded", { message: error.message ?? "" });
    case "forbidden":
      return t("forbidden");
    case "invalid_pin":
      return t("wrongPin");
    case "pin_locked":
      return t("pinLocked");
    case "missing_token":
    case "invalid_token":
    case "http_401":
      return t("notSignedIn");
    case "invalid_input":
      return t("invalidInput", { message: error.message ?? "" });
    case "network_error":
      return t("networkError");
    default:
      return t("otherError", { message: error.message ?? error.code });
  }
}
