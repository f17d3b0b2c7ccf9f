// Card reads from Web NFC (where the browser has NDEFReader) and from USB readers that act as a
// keyboard (they type the UID and Enter). The same card read again within 2 s is dropped here, on
// the device, before anything is sent.
import { useCallback, useEffect, useRef, useState } from "react";

export const DUPLICATE_READ_WINDOW_MS = 2000;

export type ReadOutcome = "accepted" | "duplicate";

interface NdefReader {
  scan: (options?: { signal?: AbortSignal }) => Promise<void>;
  onreading: ((event: { serialNumber: string }) => void) | null;
  onreadingerror: (() => void) | null;
}

export function nfcAvailable(): boolean {
  return typeof window !== "undefined" && "NDEFReader" in window;
}

/** NFC serial numbers come as "04:a1:b2:…"; printed ids as typed. */
export function normalizeCardId(raw: string): string {
  return raw.trim().toUpperCase();
}

/**
 * Calls `onCard` for each card read, except a repeat of the same card within 2 s (then
 * `onDuplicate`). Keystrokes outside text fields are collected as a keyboard-wedge read.
 */
export function useCardReader(onCard: (cardId: string) => void, onDuplicate: (cardId: string) => void) {
  const last = useRef<{ cardId: string; at: number } | null>(null);
  const buffer = useRef("");
  const handlers = useRef({ onCard, onDuplicate });
  handlers.current = { onCard, onDuplicate };
  const [nfcState, setNfcState] = useState<"off" | "on" | { error: string }>("off");
  const abort = useRef<AbortController | null>(null);

  const read = useCallback((raw: string): ReadOutcome => {
    const cardId = normalizeCardId(raw);
    if (!cardId) return "duplicate";
    const now = Date.now();
    if (last.current && last.current.cardId === cardId && now - last.current.at < DUPLICATE_READ_WINDOW_MS) {
      handlers.current.onDuplicate(cardId);
      return "duplicate";
    }
    last.current = { cardId, at: now };
    handlers.current.onCard(cardId);
    return "accepted";
  }, []);

  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      const target = event.target as HTMLElement | null;
      if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT")) return;
      if (event.key === "Enter") {
        if (buffer.current) {
          event.preventDefault();
          const text = buffer.current;
          buffer.current = "";
          read(text);
        }
      } else if (event.key.length === 1 && !event.ctrlKey && !event.metaKey && !event.altKey) {
        buffer.current += event.key;
      } else if (event.key === "Escape") {
        buffer.current = "";
      }
    };
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, [read]);

  useEffect(() => () => abort.current?.abort(), []);

  const startNfc = useCallback(async () => {
    if (!nfcAvailable()) return;
    try {
      const Reader = (window as unknown as { NDEFReader: new () => NdefReader }).NDEFReader;
      const reader = new Reader();
      abort.current?.abort();
      abort.current = new AbortController();
      await reader.scan({ signal: abort.current.signal });
      reader.onreading = (event) => read(event.serialNumber);
      setNfcState("on");
    } catch (error) {
      setNfcState({ error: (error as Error).message });
    }
  }, [read]);

  return { read, startNfc, nfcState };
}
