// Writes fmwidget/colormaps.json: the 256-entry colour tables of every colormap, sampled from
// d3-scale-chromatic. The one source of colours for the front end (js/colormaps.ts imports the
// file) and the kernel (fmwidget/picture.py draws the notebook's static picture with it).
//   npm run colormaps        (js/colormaps.test.ts fails if the file drifts from d3)
import { writeFileSync } from "node:fs";
import { interpolateMagma, interpolateRdBu, interpolateTurbo, interpolateViridis } from "d3-scale-chromatic";

const gray = (t) => {
  const v = Math.round(t * 255);
  return `rgb(${v}, ${v}, ${v})`;
};
const INTERPOLATORS = {
  gray,
  viridis: interpolateViridis,
  magma: interpolateMagma,
  // RdBu runs red→blue; reversed so negative is blue and positive red, as in most papers.
  diverging: (t) => interpolateRdBu(1 - t),
  // Grad-CAM heatmaps, not a grid colormap.
  turbo: interpolateTurbo,
};

function hex(css) {
  if (css.startsWith("#") && css.length === 7) return css.slice(1);
  const m = /^rgb\((\d+),\s*(\d+),\s*(\d+)\)$/.exec(css);
  if (m === null) throw new Error(`cannot parse colour "${css}" from d3-scale-chromatic`);
  return [m[1], m[2], m[3]].map((v) => Number(v).toString(16).padStart(2, "0")).join("");
}

const tables = {};
for (const [name, f] of Object.entries(INTERPOLATORS)) {
  let s = "";
  for (let i = 0; i < 256; i++) s += hex(f(i / 255));
  tables[name] = s;
}
const out = new URL("../fmwidget/colormaps.json", import.meta.url);
writeFileSync(out, `${JSON.stringify({ source: "d3-scale-chromatic, 256 samples, rrggbb", nan: "ff00ff", tables }, null, 1)}\n`);
console.log(`wrote ${out.pathname}`);
