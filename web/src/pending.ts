// The POS's unanswered order, kept in IndexedDB from the moment it is first sent until it has a
// final answer: a reload, a crash or a dead battery in between resends it with the same key, so
// the card is charged at most once.

export interface PendingOrder {
  client_request_id: string;
  card_id: string;
  point_of_sale_id: string;
  items: { product_id: string; quantity: number }[];
  expected_total_cents: number;
  confirm_duplicate: boolean;
  /** What the screen shows while waiting (names and prices as the menu had them). */
  lines: { product_id: string; name: string; quantity: number; price_cents: number }[];
  created_at: string;
}

const DATABASE = "festival-pos";
const STORE = "pending-orders";
const SLOT = "current";

function open(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DATABASE, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function transact<T>(mode: IDBTransactionMode, work: (store: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  const database = await open();
  try {
    return await new Promise<T>((resolve, reject) => {
      const transaction = database.transaction(STORE, mode);
      const request = work(transaction.objectStore(STORE));
      // Resolve when the transaction is durable, not when the request returns.
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  } finally {
    database.close();
  }
}

export function loadPendingOrder(): Promise<PendingOrder | undefined> {
  return transact("readonly", (store) => store.get(SLOT) as IDBRequest<PendingOrder | undefined>);
}

export async function savePendingOrder(order: PendingOrder): Promise<void> {
  await transact("readwrite", (store) => store.put(order, SLOT));
}

export async function clearPendingOrder(): Promise<void> {
  await transact("readwrite", (store) => store.delete(SLOT));
}
