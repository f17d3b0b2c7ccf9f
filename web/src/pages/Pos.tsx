// /pos: the bartender's till. Product buttons come from the bar's menu; a card read (Web NFC, a
// USB reader typing UID + Enter, or the card field) charges the cart. Exactly once from the
// device: the order and its idempotency key are stored in IndexedDB before the first send and
// resent with the same key until a final answer arrives, across network failures and reloads.
import { type FormEvent, useCallback, useEffect, useRef, useState } from "react";
import { type ErrorBody, formatMoney, invoke, newKey } from "../api";
import { useI18n } from "../i18n";
import { describeError } from "../messages";
import { clearPendingOrder, loadPendingOrder, type PendingOrder, savePendingOrder } from "../pending";
import { nfcAvailable, useCardReader } from "../reader";
import { useStaff } from "../staff";

interface Product {
  product_id: string;
  name: string;
  kind: "item" | "deposit" | "deposit_return";
  price_cents: number;
}

interface Menu {
  point_of_sale_id: string;
  name: string;
  currency: string;
  products: Product[];
}

interface OrderResult {
  order_id: number;
  card_id: string;
  total_cents: number;
  new_balance_cents: number;
  replayed: boolean;
}

type Phase =
  | { kind: "idle" }
  | { kind: "sending"; order: PendingOrder; attempts: number }
  | { kind: "pending"; order: PendingOrder; attempts: number }
  | { kind: "paid"; result: OrderResult }
  | { kind: "refused"; error: ErrorBody; order: PendingOrder }
  | { kind: "duplicate"; order: PendingOrder };

const BAR_KEY = "pos-point-of-sale-id";
const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));
/** The key of the order a send loop is running for: one loop per order, whatever React does. */
let runningKey: string | null = null;

function signedPrice(product: Pick<Product, "kind" | "price_cents">): number {
  return product.kind === "deposit_return" ? -product.price_cents : product.price_cents;
}

export function PosPage() {
  const { t, language } = useI18n();
  const { staff } = useStaff();
  const tokenRef = useRef(staff?.token ?? null);
  tokenRef.current = staff?.token ?? null;
  const [barId, setBarId] = useState(() => localStorage.getItem(BAR_KEY) ?? "main-bar");
  const [barInput, setBarInput] = useState(barId);
  const [menu, setMenu] = useState<Menu | null>(null);
  const [menuError, setMenuError] = useState<string>("");
  const [cart, setCart] = useState<Record<string, number>>({});
  const [phase, setPhase] = useState<Phase>({ kind: "idle" });
  const phaseRef = useRef(phase);
  phaseRef.current = phase;
  const [notice, setNotice] = useState("");
  const [cardInput, setCardInput] = useState("");
  const mounted = useRef(true);
  const currency = menu?.currency ?? "EUR";
  const money = (cents: number) => formatMoney(cents, currency, language);

  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);

  const loadMenu = useCallback(async (pointOfSaleId: string) => {
    setMenuError("");
    const result = await invoke<Menu>(`menu?point_of_sale_id=${encodeURIComponent(pointOfSaleId)}`, {
      method: "GET",
      token: tokenRef.current,
    });
    if (result.kind === "ok") {
      setMenu(result.data);
      localStorage.setItem(BAR_KEY, pointOfSaleId);
    } else {
      setMenu(null);
      setMenuError(t("menuFailed", { message: describeError(t, result.error, language) }));
    }
  }, [t, language]);

  useEffect(() => {
    void loadMenu(barId);
  }, [barId]); // eslint-disable-line react-hooks/exhaustive-deps

  /** Sends the order until it has a final answer; the same key every time. */
  const runOrder = useCallback(async (order: PendingOrder) => {
    if (runningKey === order.client_request_id) return;
    runningKey = order.client_request_id;
    try {
      await savePendingOrder(order);
      for (let attempts = 1; mounted.current; attempts++) {
        setPhase({ kind: attempts === 1 ? "sending" : "pending", order, attempts });
        const result = await invoke<OrderResult>("process-bar-order", {
          token: tokenRef.current,
          timeoutMs: 10_000,
          body: {
            card_id: order.card_id,
            items: order.items,
            point_of_sale_id: order.point_of_sale_id,
            client_request_id: order.client_request_id,
            expected_total_cents: order.expected_total_cents,
            ...(order.confirm_duplicate ? { confirm_duplicate: true } : {}),
          },
        });
        if (result.kind === "no_answer") {
          if (!mounted.current) return;
          setPhase({ kind: "pending", order, attempts });
          await sleep(Math.min(1000 * attempts, 5000));
          continue;
        }
        await clearPendingOrder();
        if (result.kind === "ok") {
          setCart({});
          setPhase({ kind: "paid", result: result.data });
        } else if (result.error.code === "duplicate_tap_suspected") {
          setPhase({ kind: "duplicate", order });
        } else {
          setPhase({ kind: "refused", error: result.error, order });
        }
        return;
      }
    } finally {
      runningKey = null;
    }
  }, []);

  // An order left unanswered (reload, crash) is resumed with its own key.
  useEffect(() => {
    void loadPendingOrder().then((order) => {
      if (!order || !mounted.current) return;
      setCart(Object.fromEntries(order.items.map((item) => [item.product_id, item.quantity])));
      void runOrder(order);
    });
  }, [runOrder]);

  const busy = phase.kind === "sending" || phase.kind === "pending" || phase.kind === "duplicate";

  const onCard = useCallback((cardId: string) => {
    const current = phaseRef.current;
    if (current.kind === "sending" || current.kind === "pending" || current.kind === "duplicate") {
      setNotice(t("busy"));
      return;
    }
    if (!menu) {
      setNotice(t("menuMissing"));
      return;
    }
    const items = Object.entries(cart).filter(([, quantity]) => quantity > 0)
      .map(([product_id, quantity]) => ({ product_id, quantity }));
    if (items.length === 0) {
      setNotice(t("addProductsFirst"));
      return;
    }
    setNotice("");
    const lines = items.map((item) => {
      const product = menu.products.find((candidate) => candidate.product_id === item.product_id)!;
      return { product_id: item.product_id, name: product.name, quantity: item.quantity, price_cents: signedPrice(product) };
    });
    void runOrder({
      client_request_id: newKey("pos"),
      card_id: cardId,
      point_of_sale_id: menu.point_of_sale_id,
      items,
      expected_total_cents: lines.reduce((sum, line) => sum + line.price_cents * line.quantity, 0),
      confirm_duplicate: false,
      lines,
      created_at: new Date().toISOString(),
    });
  }, [cart, menu, runOrder, t]);

  const onDuplicateRead = useCallback(() => setNotice(t("duplicateRead")), [t]);
  const { read, startNfc, nfcState } = useCardReader(onCard, onDuplicateRead);

  const change = (productId: string, delta: number) => {
    if (busy) return;
    if (phase.kind === "paid" || phase.kind === "refused") setPhase({ kind: "idle" });
    setNotice("");
    setCart((previous) => {
      const quantity = Math.max(0, Math.min(99, (previous[productId] ?? 0) + delta));
      const next = { ...previous, [productId]: quantity };
      if (quantity === 0) delete next[productId];
      return next;
    });
  };

  const submitCard = (event: FormEvent) => {
    event.preventDefault();
    if (cardInput.trim()) read(cardInput);
    setCardInput("");
  };

  const pendingLines = phase.kind === "sending" || phase.kind === "pending" ? phase.order.lines : null;
  const cartLines = pendingLines ??
    (menu?.products ?? []).filter((product) => cart[product.product_id])
      .map((product) => ({ product_id: product.product_id, name: product.name, quantity: cart[product.product_id], price_cents: signedPrice(product) }));
  const total = cartLines.reduce((sum, line) => sum + line.price_cents * line.quantity, 0);

  return (
    <div className="pos">
      <section className="panel menu" aria-labelledby="menu-title">
        <form className="inline" onSubmit={(event) => {
          event.preventDefault();
          // A new bar loads through the effect on barId; the same bar is loaded again here.
          if (barInput.trim() === barId) void loadMenu(barId);
          else setBarId(barInput.trim());
        }}>
          <label>{t("bar")} <input value={barInput} onChange={(event) => setBarInput(event.target.value)} data-testid="bar-id" /></label>
          <button type="submit" className="small">{t("loadMenu")}</button>
        </form>
        <h2 id="menu-title">{menu?.name ?? barId}</h2>
        {menuError && <p role="alert" className="message error">{menuError}</p>}
        <div className="products">
          {menu?.products.map((product) => (
            <button key={product.product_id} type="button" className={`product ${product.kind}`} disabled={busy}
              data-testid={`product-${product.product_id}`} onClick={() => change(product.product_id, 1)}>
              <span className="name">{product.name}</span>
              <span className="price">{money(signedPrice(product))}</span>
            </button>
          ))}
        </div>
      </section>

      <section className="panel cart" aria-labelledby="cart-title">
        <h2 id="cart-title">{t("cart")}</h2>
        {cartLines.length === 0 ? <p className="hint">{t("cartEmpty")}</p> : (
          <ul className="lines">
            {cartLines.map((line) => (
              <li key={line.product_id}>
                <span className="quantity">{line.quantity}×</span>
                <span className="name">{line.name}</span>
                <span className="amount">{money(line.price_cents * line.quantity)}</span>
                <button type="button" className="small" disabled={busy} aria-label={t("remove", { name: line.name })}
                  onClick={() => change(line.product_id, -1)}>−</button>
                <button type="button" className="small" disabled={busy} aria-label={t("add", { name: line.name })}
                  onClick={() => change(line.product_id, 1)}>+</button>
              </li>
            ))}
          </ul>
        )}
        <p className="total"><span>{t("total")}</span> <strong data-testid="total">{money(total)}</strong></p>
        {cartLines.length > 0 && !busy && (
          <button type="button" className="small" onClick={() => { setCart({}); setPhase({ kind: "idle" }); }}>{t("clear")}</button>
        )}

        <form className="card-form" onSubmit={submitCard}>
          <label htmlFor="card-input">{t("cardId")}</label>
          <div className="inline">
            <input id="card-input" data-testid="card-input" value={cardInput} autoComplete="off" autoCapitalize="characters"
              placeholder={t("cardPlaceholder")} onChange={(event) => setCardInput(event.target.value)} />
            <button type="submit" className="primary big" data-testid="charge">{t("charge")}</button>
          </div>
          <p className="hint">{t("readerHint")}</p>
          {nfcAvailable() && nfcState === "off" && (
            <button type="button" className="big" onClick={() => void startNfc()}>{t("scanNfc")}</button>
          )}
          {nfcState === "on" && <p className="hint">{t("nfcOn")}</p>}
          {typeof nfcState === "object" && <p className="message error">{t("nfcFailed", { message: nfcState.error })}</p>}
        </form>
        {notice && <p className="message notice" role="status" data-testid="notice">{notice}</p>}

        <div className="status" aria-live="polite" data-testid="status" data-phase={phase.kind}>
          {phase.kind === "sending" && <p className="message info">{t("sending", { card: phase.order.card_id })}</p>}
          {phase.kind === "pending" && (
            <div className="message warning" data-testid="pending">
              <p>{t("pending")}</p>
              <p className="hint">{t("pendingAttempts", { count: phase.attempts })} · {phase.order.card_id}</p>
            </div>
          )}
          {phase.kind === "paid" && (
            <div className="message success" data-testid="paid">
              <p>{t("paid", { amount: money(phase.result.total_cents) })} · {phase.result.card_id}</p>
              <p className="balance-label">{t("newBalance")}</p>
              <p className="balance" data-testid="new-balance" data-cents={phase.result.new_balance_cents}>
                {money(phase.result.new_balance_cents)}
              </p>
              <p className="hint">{t("orderNumber", { id: phase.result.order_id })}</p>
            </div>
          )}
          {phase.kind === "refused" && (
            <p className="message error" role="alert" data-testid="error" data-code={phase.error.code}>
              {describeError(t, phase.error, language, currency)}
            </p>
          )}
        </div>
      </section>

      {phase.kind === "duplicate" && (
        <div className="dialog-backdrop">
          <div role="alertdialog" aria-modal="true" aria-labelledby="duplicate-title" className="dialog" data-testid="duplicate-dialog">
            <h2 id="duplicate-title">{t("duplicateTitle")}</h2>
            <p>{t("duplicateText", { card: phase.order.card_id })}</p>
            <p className="total"><span>{t("total")}</span> <strong>{money(phase.order.expected_total_cents)}</strong></p>
            <div className="inline">
              {/* Focus on "do not charge": a reader's stray Enter must never charge a card twice. */}
              <button type="button" className="primary big" data-testid="duplicate-confirm"
                onClick={() => void runOrder({ ...phase.order, client_request_id: `${phase.order.client_request_id}-confirmed`, confirm_duplicate: true })}>
                {t("duplicateConfirm")}
              </button>
              <button type="button" className="big" autoFocus data-testid="duplicate-cancel"
                onClick={() => { setCart({}); setPhase({ kind: "idle" }); }}>
                {t("duplicateCancel")}
              </button>
            </div>
          </div>
        </div>
      )}
    </div>
  );
}
