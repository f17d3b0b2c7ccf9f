// Throughput and latency over time for the load-test report: ECharts renders the SVG on the
// server (no browser, no DOM), resvg turns it into a PNG.
//   node loadtest/chart.mjs <series.json> <out.svg> <out.png>

import { readFileSync, writeFileSync } from "node:fs";
import * as echarts from "echarts";
import { Resvg } from "@resvg/resvg-js";

const [input, svgFile, pngFile] = process.argv.slice(2);
const data = JSON.parse(readFileSync(input, "utf8"));
const width = 1200;
const height = 560;

const chart = echarts.init(null, null, { renderer: "svg", ssr: true, width, height });
const at = (key) => data.series.map((point) => [point.second, Number.isFinite(point[key]) ? point[key] : null]);
chart.setOption({
  animation: false,
  backgroundColor: "#ffffff",
  textStyle: { fontFamily: "DejaVu Sans, sans-serif" },
  title: { text: data.title, left: 16, top: 8, textStyle: { fontSize: 15 } },
  legend: { top: 36, left: 16 },
  grid: { left: 70, right: 80, top: 80, bottom: 56 },
  xAxis: { type: "value", name: "seconds since start", nameLocation: "middle", nameGap: 30, min: 0 },
  yAxis: [
    { type: "value", name: "responses/s", position: "left" },
    { type: "log", name: "latency ms (log)", position: "right", min: 1, splitLine: { show: false } },
  ],
  series: [
    {
      name: "responses/s",
      type: "line",
      yAxisIndex: 0,
      showSymbol: false,
      areaStyle: { opacity: 0.15 },
      data: at("throughput"),
      markArea: {
        silent: true,
        itemStyle: { color: "rgba(120,120,120,0.06)", borderColor: "rgba(120,120,120,0.4)", borderWidth: 1 },
        label: { position: "insideTop", fontSize: 10, color: "#555" },
        data: data.phases.map((phase) => [
          { name: phase.name, xAxis: phase.from },
          { xAxis: phase.to },
        ]),
      },
    },
    { name: "failures/s", type: "line", yAxisIndex: 0, showSymbol: false, data: at("failures") },
    { name: "p50 ms", type: "line", yAxisIndex: 1, showSymbol: false, data: at("p50") },
    { name: "p95 ms", type: "line", yAxisIndex: 1, showSymbol: false, data: at("p95") },
    { name: "p99 ms", type: "line", yAxisIndex: 1, showSymbol: false, lineStyle: { type: "dashed" }, data: at("p99") },
  ],
});
const svg = chart.renderToSVGString();
chart.dispose();
writeFileSync(svgFile, svg);

const png = new Resvg(svg, {
  background: "#ffffff",
  fitTo: { mode: "width", value: width },
  font: { loadSystemFonts: true, defaultFontFamily: "DejaVu Sans" },
}).render().asPng();
writeFileSync(pngFile, png);
