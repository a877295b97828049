/**
 * Entry of a saved HTML file (`FeatureMapWidget.save_html`): reads the data embedded in the page and mounts
 * the same view as in JupyterLab on `#fmwidget-root`, over the file's local model and embedded data source.
 * Bundled on its own (fmwidget/static/standalone.js, an IIFE) and inlined into every saved file.
 */
import { EmbeddedSource, LocalModel, readSavedFile, type SavedData } from "./embedded";
import { mount } from "./widget";

/** One line above the view: what the file holds and what it cannot do. */
function savedNote({ saved }: SavedData): HTMLElement {
  const note = document.createElement("p");
  note.className = "fm-saved-note";
  const sample = saved.num_samples > 1 ? ` · input #${saved.sample} of ${saved.num_samples}` : "";
  note.textContent =
    `Saved fmwidget view · ${saved.layers} of ${saved.of_layers} layers${sample} · ` +
    "values stored as 8 bits per activation, each channel on its own range; no kernel behind this page.";
  return note;
}

function start(): void {
  const host = document.getElementById("fmwidget-root") ?? document.body;
  try {
    const file = readSavedFile(document);
    host.append(savedNote(file.data));
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
