/**
 * Entry of a saved HTML file (`FeatureMapWidget.save_html`): reads the data embedded in the page and mounts
 * the same view as in JupyterLab on `#fmwidget-root`, over the file's local model and embedded data source.
 * Bundled on its own (fmwidget/static/standalone.js, an IIFE) and inlined into every saved file.
 */
import { EmbeddedSource, LocalModel, readSavedFile } from "./embedded";
import { mount } from "./widget";

function start(): void {
  const host = document.getElementById("fmwidget-root") ?? document.body;
  try {
    const file = readSavedFile(document);
    mount(host, new LocalModel(file.data.traits), (store) => new EmbeddedSource(file, store));
  } catch (e) {
    const failed = document.createElement("div");
    failed.className = "fmwidget";
    failed.dataset.state = "error";
    failed.setAttribute("role", "alert");
    failed.textContent = `This saved view could not start: ${e instanceof Error ? e.message : String(e)}`;
    host.append(failed);
  }
}

start();
