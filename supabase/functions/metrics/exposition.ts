// Prometheus text exposition of the metric families sp_metrics returns, written by prom-client
// (the Node.js Prometheus client, which runs under Deno): escaping, ordering and the format's
// details stay in a well-kept library. A fresh registry per scrape: functions are stateless, and
// every value is the database's current total.

import { Counter, Gauge, Registry } from "prom-client";

export interface MetricSample {
  labels: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  name: string;
  help: string;
  type: "counter" | "gauge";
  samples: MetricSample[];
}

export const EXPOSITION_CONTENT_TYPE = Registry.PROMETHEUS_CONTENT_TYPE;

export async function renderMetrics(families: MetricFamily[]): Promise<string> {
  const registry = new Registry();
  for (const family of families) {
    const labelNames = [...new Set(family.samples.flatMap((sample) => Object.keys(sample.labels)))].sort();
    if (family.type === "counter") {
      const counter = new Counter({ name: family.name, help: family.help, labelNames, registers: [registry] });
      for (const sample of family.samples) counter.inc(sample.labels, Number(sample.value));
    } else {
      const gauge = new Gauge({ name: family.name, help: family.help, labelNames, registers: [registry] });
      for (const sample of family.samples) gauge.set(sample.labels, Number(sample.value));
    }
  }
  return await registry.metrics();
}
