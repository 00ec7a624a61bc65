"use strict";
// The report's behaviour: maps (Plotly), hover thumbnails, cluster filters, galleries, duplicate groups, flags,
// and editing: select images, move, mark, rename and merge clusters, undo, and save the edits as edits.json.
// Every string from the data is set with textContent or as an attribute, never as HTML.
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const SHOWN_TYPICAL = 48;
  const SHOWN_OUTLIERS = 12;
  const SHOWN_GROUPS = 60;
  const SHOWN_FLAGGED = 120;
  const WEBGL_ABOVE = 5000;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function thumbOf(point) {
    const index = data.points.thumb[point];
    return index >= 0 ? data.thumbs[index] : null;
  }

  function renderSummary() {
    document.getElementById("title").textContent = data.title;
    document.title = data.title;
    const box = document.getElementById("summary");
    for (const [label, value] of data.summary) {
      const item = el("div");
      item.append(el("span", { class: "label" }, label), el("span", { class: "value" }, value));
      box.append(item);
    }
  }

  // ---- the grouping as edited ----
  // Groups are data.clusters' ids (>= 0 clusters; -1 noise or _new, -2 _outliers, -3 _excluded) and the ids of
  // clusters a person made here. The state is what the person made of them; edits.json is derived from it by
  // comparing with the run's own grouping, so undoing and editing again gives the smallest file.
  const N = data.points.cluster.length;
  const ORIGINAL = Int32Array.from(data.points.cluster);
  const OUTLIERS = -2;
  const EXCLUDED = -3;
  const SPECIAL_NAMES = { "-2": "_outliers", "-3": "_excluded" };
  const SPECIAL_COLOURS = { "-2": "#b4b4b4", "-3": "#5c5c5c" };
  const RESERVED = ["_outliers", "_excluded", "_new", "noise", ".", ".."];
  const NEW_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"];
  const STORE_KEY = `pixclust-edits:${data.run}`;
  const byId = new Map(data.clusters.map((cluster) => [cluster.id, cluster]));
  const SPECIAL_IDS = [...data.clusters.filter((c) => c.id < 0).map((c) => c.id)];
  for (const id of [OUTLIERS, EXCLUDED]) if (!SPECIAL_IDS.includes(id)) SPECIAL_IDS.push(id);
  // Every image once, in the page's order: cluster by cluster, most typical first. A gallery lists its own images
  // in this order, then those that came from elsewhere, so an edited grouping shows the same whatever its history.
  const ORDER = (() => {
    const seen = new Uint8Array(N);
    const order = [];
    for (const cluster of data.clusters) {
      for (const point of cluster.members) if (!seen[point]) { seen[point] = 1; order.push(point); }
    }
    for (let point = 0; point < N; point++) if (!seen[point]) order.push(point);
    return order;
  })();
  const timings = [];
  window.pixclustTimings = timings;

  let state = { current: Int32Array.from(ORIGINAL), names: {}, made: [], merged: [] };
  let undoLog = [];
  let members = new Map();
  const selected = new Set();

  function metaOf(from) {
    return JSON.parse(JSON.stringify({ names: from.names, made: from.made, merged: from.merged }));
  }
  function madeOf(id) { return state.made.find((made) => made.id === id); }
  function mergedInto(id) {
    const found = state.merged.find(([away]) => away === id);
    return found ? found[1] : undefined;
  }
  // A cluster a person can name, merge and move images into: one of the run's, or one made here.
  function isCluster(id) { return (id >= 0 && byId.has(id)) || madeOf(id) !== undefined; }
  function alive(id) { return isCluster(id) && mergedInto(id) === undefined; }
  function originalName(id) {
    if (byId.has(id)) return byId.get(id).name;
    const made = madeOf(id);
    return made ? made.given : SPECIAL_NAMES[id] || String(id);
  }
  function displayName(id) { return Object.hasOwn(state.names, id) ? state.names[id] : originalName(id); }
  // The name edits.json gives a cluster: the run's name for one of its clusters, the current name of one made here.
  function editName(id) { return byId.has(id) ? byId.get(id).name : displayName(id); }
  function colourOf(id) {
    if (byId.has(id)) return byId.get(id).colour;
    const made = madeOf(id);
    return made ? made.colour : SPECIAL_COLOURS[id] || "#999999";
  }
  // A cluster's name, and what it shows where the model could name it ("cluster_03: tabby / tiger cat"); a name
  // a person gave says it all.
  function titleOf(id) {
    const shows = Object.hasOwn(state.names, id) ? "" : (byId.get(id) || {}).shows;
    return shows ? `${displayName(id)}: ${shows}` : displayName(id);
  }

  function clusterIds() {
    return [
      ...data.clusters.filter((c) => c.id >= 0 && alive(c.id)).map((c) => c.id),
      ...state.made.filter((made) => alive(made.id)).map((made) => made.id),
    ];
  }
  // The groups shown: every live cluster, and the special groups that hold images.
  function shownIds() {
    return [...clusterIds(), ...SPECIAL_IDS.filter((id) => (members.get(id) || []).length)];
  }

  function computeMembers() {
    const own = new Map();
    const came = new Map();
    for (const point of ORDER) {
      const id = state.current[point];
      const bucket = ORIGINAL[point] === id ? own : came;
      let list = bucket.get(id);
      if (!list) bucket.set(id, (list = []));
      list.push(point);
    }
    for (const [id, list] of came) own.set(id, own.has(id) ? own.get(id).concat(list) : list);
    return own;
  }

  function sameList(a, b) {
    if (a === b) return true;
    if (!a || !b || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  // ---- filters and galleries ----
  let activeCluster = null;
  const sections = new Map();
  let anchor = null;

  function filterGalleries(clusterId) {
    activeCluster = clusterId;
    for (const section of document.querySelectorAll(".gallery")) {
      const show = clusterId === null || Number(section.dataset.cluster) === clusterId;
      section.style.display = show ? "" : "none";
    }
    for (const button of document.querySelectorAll("#filters button")) {
      const id = button.dataset.cluster === "all" ? null : Number(button.dataset.cluster);
      button.classList.toggle("active", id === clusterId);
    }
  }

  function image(point) {
    const src = thumbOf(point);
    const name = data.points.name[point];
    const img = el("img", { alt: name, title: data.points.path[point], "data-point": String(point) });
    if (src) img.src = src;
    return img;
  }

  function fillGrid(entry) {
    const { grid, list } = entry;
    grid.textContent = "";
    const limit = SHOWN_TYPICAL + SHOWN_OUTLIERS;
    const add = (point) => {
      const img = image(point);
      if (selected.has(point)) img.classList.add("selected");
      grid.append(img);
    };
    const all = entry.expanded || list.length <= limit;
    if (all) {
      list.forEach(add);
    } else {
      list.slice(0, SHOWN_TYPICAL).forEach(add);
      grid.append(el("div", { class: "divider" }, `… ${list.length - limit} more … least typical:`));
      list.slice(list.length - SHOWN_OUTLIERS).forEach(add);
    }
    entry.more.style.display = all ? "none" : "";
    entry.more.textContent = `show all ${list.length.toLocaleString()}`;
  }

  function makeSection(id) {
    const section = el("section", { class: "gallery", "data-cluster": String(id) });
    const heading = el("h3");
    const swatch = el("span", { class: "swatch" });
    const title = el("span", { class: "name" });
    const size = el("span", { class: "muted size" });
    heading.append(swatch, title, size);
    const entry = { id, section, swatch, title, size, merge: null, grid: null, more: null, expanded: false, list: [] };
    if (isCluster(id)) {
      const controls = el("span", { class: "edit-controls" });
      const rename = el("button", { class: "rename", type: "button", title: "give this cluster a name" }, "Rename");
      rename.addEventListener("click", () => renameCluster(id));
      const merge = el("select", { class: "merge-into", title: "move all of this cluster's images into another" });
      merge.addEventListener("change", () => {
        const into = merge.value;
        merge.value = "";
        if (into !== "") mergeCluster(id, Number(into));
      });
      controls.append(rename, merge);
      heading.append(controls);
      entry.merge = merge;
    }
    entry.grid = el("div", { class: "grid", "data-cluster": String(id) });
    entry.more = el("button", { class: "show-all", type: "button" });
    entry.more.addEventListener("click", () => { entry.expanded = true; fillGrid(entry); });
    section.append(heading, entry.grid, entry.more);
    return entry;
  }

  function fillOptions(select, ids, first) {
    select.textContent = "";
    if (first) select.append(el("option", { value: "" }, first));
    for (const id of ids) select.append(el("option", { value: String(id) }, displayName(id)));
  }

  let namesShown = null;

  // Brings the galleries, filters and lists of clusters up to date with the state; only galleries whose images
  // changed are filled again.
  function syncGalleries() {
    const box = document.getElementById("galleries");
    const shown = shownIds();
    const clusters = clusterIds();
    const namesNow = JSON.stringify(clusters.map((id) => [id, displayName(id)]));
    const namesChanged = namesNow !== namesShown;
    namesShown = namesNow;
    for (const [id, entry] of sections) {
      if (!shown.includes(id)) { entry.section.remove(); sections.delete(id); }
    }
    for (const id of shown) {
      let entry = sections.get(id);
      const list = members.get(id) || [];
      if (!entry) {
        entry = makeSection(id);
        sections.set(id, entry);
        entry.list = list;
        fillGrid(entry);
      } else if (!sameList(entry.list, list)) {
        entry.list = list;
        fillGrid(entry);
      }
      entry.swatch.style.background = colourOf(id);
      entry.title.textContent = titleOf(id);
      // A sharded run's page shows a sample: each cluster's size in the whole run is said beside it.
      const sampled = data.sample_of !== null && data.sample_of > data.points.path.length;
      const whole = sampled && byId.has(id) ? byId.get(id).size : null;
      entry.size.textContent = whole === null
        ? `${list.length.toLocaleString()} images, most typical first`
        : `${list.length.toLocaleString()} of its ${whole.toLocaleString()} images (a sample), most typical first`;
      if (entry.merge && namesChanged) {
        fillOptions(entry.merge, clusters.filter((other) => other !== id), "Merge into…");
      }
      box.append(entry.section);
    }
    if (anchor && !anchor.grid.isConnected) anchor = null;

    const filters = document.getElementById("filters");
    filters.textContent = "";
    const all = el("button", { "data-cluster": "all" }, "all clusters");
    all.addEventListener("click", () => filterGalleries(null));
    filters.append(all);
    for (const id of shown) {
      const chip = el("button", { "data-cluster": String(id), class: "chip" });
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colourOf(id);
      chip.append(swatch, document.createTextNode(titleOf(id)));
      chip.addEventListener("click", () => filterGalleries(id));
      filters.append(chip);
    }
    filterGalleries(shown.includes(activeCluster) ? activeCluster : null);

    if (namesChanged) {
      const target = document.getElementById("move-target");
      const before = target.value;
      fillOptions(target, clusters, null);
      target.append(el("option", { value: "new" }, "new cluster…"));
      if ([...target.options].some((option) => option.value === before)) target.value = before;
    }
  }

  // ---- selection ----
  function updateSelection() {
    for (const img of document.querySelectorAll("#galleries img")) {
      img.classList.toggle("selected", selected.has(Number(img.dataset.point)));
    }
    document.getElementById("selected-count").textContent = `${selected.size.toLocaleString()} selected`;
    for (const id of ["move-apply", "mark-outlier", "mark-exclude", "clear-selection"]) {
      document.getElementById(id).disabled = selected.size === 0;
    }
  }

  function onGalleryClick(event) {
    const img = event.target.closest(".gallery img");
    if (!img) return;
    const point = Number(img.dataset.point);
    const grid = img.closest(".grid");
    const t0 = performance.now();
    let range = null;
    if (event.shiftKey && anchor && anchor.grid === grid) {
      const images = [...grid.querySelectorAll("img")];
      const from = images.findIndex((other) => Number(other.dataset.point) === anchor.point);
      const to = images.indexOf(img);
      if (from >= 0 && to >= 0) range = images.slice(Math.min(from, to), Math.max(from, to) + 1);
    }
    if (range) {
      for (const other of range) selected.add(Number(other.dataset.point));
    } else if (selected.has(point)) {
      selected.delete(point);
    } else {
      selected.add(point);
    }
    anchor = { grid, point };
    updateSelection();
    record(range ? "shift-click" : "click", t0, t0);
  }

  function clearSelection() {
    const t0 = performance.now();
    selected.clear();
    anchor = null;
    updateSelection();
    redrawMap().then(() => record("clear selection", t0, t0));
  }

  // ---- edits ----
  function message(text) {
    document.getElementById("edit-message").textContent = text;
  }

  // The name typed, or null (cancelled, or refused with the reason why).
  function askName(question, initial, self) {
    const answer = window.prompt(question, initial);
    if (answer === null) return null;
    const name = answer.trim();
    let why = null;
    if (!name) why = "A cluster needs a name.";
    else if (name.includes("/") || name.includes("\\")) why = `"${name}" cannot name a cluster: no "/" or "\\" in a name.`;
    else if (RESERVED.includes(name)) why = `"${name}" is pixclust's own; choose another name.`;
    // eslint-disable-next-line no-control-regex
    else if (/[\u0000-\u001f\u007f]/.test(name)) why = "A cluster's name cannot hold control characters.";
    else if (new TextEncoder().encode(name).length > 200) why = "A cluster's name must be 200 bytes or shorter.";
    // clusters.csv holds the name as it is, and a spreadsheet would run one that starts like a formula.
    else if (/^[=+\-@]/.test(name)) why = `"${name}" starts like a spreadsheet formula (= + - @); choose another name.`;
    else {
      const ids = [...data.clusters.map((c) => c.id), ...state.made.map((made) => made.id)];
      if (ids.some((id) => id !== self && (displayName(id) === name || originalName(id) === name))) {
        why = `"${name}" already names another cluster; to join them, merge them.`;
      }
    }
    if (why) {
      message(why);
      window.alert(why);
      return null;
    }
    return name;
  }

  // Carries out one action: change() edits the state (returning false when it changed nothing); the action and
  // what it changed go on the undo log.
  function act(label, change) {
    const t0 = performance.now();
    const before = { meta: metaOf(state), current: Int32Array.from(state.current) };
    if (change() === false) return;
    const points = [];
    const from = [];
    for (let point = 0; point < N; point++) {
      if (state.current[point] !== before.current[point]) { points.push(point); from.push(before.current[point]); }
    }
    // An action that changed nothing (images moved where they were) leaves nothing to undo.
    if (points.length || JSON.stringify(metaOf(state)) !== JSON.stringify(before.meta)) {
      undoLog.push({ label, points, from, meta: before.meta });
    }
    refresh(label, t0);
  }

  function undo() {
    const entry = undoLog.pop();
    if (!entry) return;
    const t0 = performance.now();
    entry.points.forEach((point, index) => { state.current[point] = entry.from[index]; });
    Object.assign(state, metaOf(entry.meta));
    refresh(`undo ${entry.label}`, t0);
  }

  function moveSelection(label, target, before) {
    if (!selected.size) return;
    act(label, () => {
      if (before) before();
      for (const point of selected) state.current[point] = target;
      selected.clear();
      anchor = null;
    });
  }

  function newColour() {
    const used = new Set([...data.clusters.map((c) => c.colour), ...state.made.map((made) => made.colour)]);
    const free = NEW_COLOURS.find((colour) => !used.has(colour));
    if (free) return free;
    // Then hues a golden angle apart, as #rrggbb.
    const hue = (state.made.length * 137.508) % 360;
    const channel = (n) => {
      const k = (n + hue / 30) % 12;
      const value = 0.5 - 0.4 * Math.max(-1, Math.min(k - 3, 9 - k, 1));
      return Math.round(value * 255).toString(16).padStart(2, "0");
    };
    return `#${channel(0)}${channel(8)}${channel(4)}`;
  }

  function moveToChosen() {
    const target = document.getElementById("move-target").value;
    if (!selected.size || target === "") return;
    if (target !== "new") { moveSelection("move", Number(target)); return; }
    const name = askName("Name of the new cluster:", "", null);
    if (name === null) return;
    const ids = [...data.clusters.map((c) => c.id), ...state.made.map((made) => made.id)];
    const id = Math.max(0, ...ids) + 1;
    moveSelection("new cluster", id, () => state.made.push({ id, given: name, colour: newColour() }));
  }

  function renameCluster(id) {
    if (!alive(id)) return;
    const name = askName(`New name for ${displayName(id)}:`, displayName(id), id);
    if (name === null || name === displayName(id)) return;
    act("rename", () => {
      if (name === originalName(id)) delete state.names[id];
      else state.names[id] = name;
    });
  }

  function mergeCluster(away, into) {
    if (away === into || !alive(away) || !alive(into)) return;
    act("merge", () => {
      for (let point = 0; point < N; point++) if (state.current[point] === away) state.current[point] = into;
      state.merged.push([away, into]);
    });
  }

  // edits.json, derived from the state by comparing with the run's grouping (docs: pixclust.curation.edits).
  function deriveEdits() {
    const rename = {};
    for (const cluster of data.clusters) {
      if (cluster.id >= 0 && alive(cluster.id) && displayName(cluster.id) !== cluster.name) {
        rename[cluster.name] = displayName(cluster.id);
      }
    }
    // Merges among the run's own clusters; a cluster made here exists for pixclust apply only by the images
    // moved into it, so what was merged into one is written as moves, and one merged away as its images' moves.
    const rootOf = (id) => {
      for (let steps = 0; mergedInto(id) !== undefined && steps <= state.merged.length; steps++) id = mergedInto(id);
      return id;
    };
    const groups = new Map();
    const rootOfAway = new Map();
    for (const [away] of state.merged) {
      const root = rootOf(away);
      if (!(away >= 0 && byId.has(away) && root >= 0 && byId.has(root))) continue;
      if (!groups.has(root)) groups.set(root, [byId.get(root).name]);
      groups.get(root).push(byId.get(away).name);
      rootOfAway.set(away, root);
    }
    const move = [];
    const outlier = [];
    const exclude = [];
    for (let point = 0; point < N; point++) {
      const now = state.current[point];
      const was = ORIGINAL[point];
      if (now === was) continue;
      const path = data.points.path[point];
      if (now === OUTLIERS) outlier.push(path);
      else if (now === EXCLUDED) exclude.push(path);
      else if (isCluster(now) && rootOfAway.get(was) !== now) move.push({ path, to: editName(now) });
    }
    return {
      version: 1, run: data.run, rename, merge: [...groups.values()], move, outlier, exclude,
      pin: { together: [], apart: [] },
    };
  }

  function editCount(edits) {
    return Object.keys(edits.rename).length + edits.merge.reduce((sum, group) => sum + group.length - 1, 0)
      + edits.move.length + edits.outlier.length + edits.exclude.length;
  }

  function saveEdits() {
    const t0 = performance.now();
    const text = `${JSON.stringify(deriveEdits(), null, 1)}\n`;
    const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    const link = el("a", { href: url, download: "edits.json" });
    link.style.display = "none";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    record("save", t0, t0);
  }

  // ---- keeping the state in the browser ----
  function persist() {
    const assign = [];
    for (let point = 0; point < N; point++) {
      if (state.current[point] !== ORIGINAL[point]) assign.push(point, state.current[point]);
    }
    try {
      if (!assign.length && !undoLog.length && !state.made.length && !Object.keys(state.names).length) {
        localStorage.removeItem(STORE_KEY);
        return;
      }
      const saved = { version: 1, assign, names: state.names, made: state.made, merged: state.merged, undo: undoLog };
      try {
        localStorage.setItem(STORE_KEY, JSON.stringify(saved));
      } catch (error) {
        // Over the quota: the edits matter more than the way back.
        saved.undo = [];
        localStorage.setItem(STORE_KEY, JSON.stringify(saved));
      }
    } catch (error) {
      message("This browser keeps no edits for this page (storage is not allowed); save edits.json before closing it.");
    }
  }

  const isInt = (value) => Number.isInteger(value);

  function checkMeta(meta) {
    const { names, made, merged } = meta || {};
    if (!names || typeof names !== "object" || Array.isArray(names)) throw new Error("names");
    if (!Object.values(names).every((name) => typeof name === "string")) throw new Error("names");
    if (!Array.isArray(made) || !made.every((m) => m && isInt(m.id) && m.id >= 0 && !byId.has(m.id)
      && typeof m.given === "string" && /^#[0-9a-f]{6}$/i.test(m.colour))) throw new Error("made");
    if (!Array.isArray(merged) || !merged.every((pair) => Array.isArray(pair) && pair.length === 2
      && pair.every(isInt))) throw new Error("merged");
    return { names, made: made.map(({ id, given, colour }) => ({ id, given, colour })), merged };
  }

  function restore() {
    let text = null;
    try { text = localStorage.getItem(STORE_KEY); } catch (error) { return; }
    if (!text) return;
    try {
      const saved = JSON.parse(text);
      if (saved.version !== 1) throw new Error("version");
      const meta = checkMeta(saved);
      const known = new Set([...byId.keys(), ...SPECIAL_IDS, ...meta.made.map((m) => m.id)]);
      const current = Int32Array.from(ORIGINAL);
      const { assign } = saved;
      if (!Array.isArray(assign) || assign.length % 2) throw new Error("assign");
      for (let i = 0; i < assign.length; i += 2) {
        const [point, id] = [assign[i], assign[i + 1]];
        if (!isInt(point) || point < 0 || point >= N || !known.has(id)) throw new Error("assign");
        current[point] = id;
      }
      const log = (Array.isArray(saved.undo) ? saved.undo : []).map((entry) => {
        const { label, points, from } = entry;
        if (typeof label !== "string" || !Array.isArray(points) || !Array.isArray(from) || points.length !== from.length
          || !points.every((point) => isInt(point) && point >= 0 && point < N) || !from.every(isInt)) {
          throw new Error("undo");
        }
        return { label, points, from, meta: checkMeta(entry.meta) };
      });
      state = { current, ...meta };
      undoLog = log;
    } catch (error) {
      message("The edits this browser kept for this report could not be read; starting from the run as it is.");
    }
  }

  // ---- after each action ----
  function record(action, t0, domDone) {
    const entry = { action, ms: Math.round((performance.now() - t0) * 10) / 10, points: N };
    if (domDone !== t0) entry.dom_ms = Math.round((domDone - t0) * 10) / 10;
    timings.push(entry);
    return entry;
  }

  function nextFrame() {
    return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  }

  function syncEditBar() {
    const count = editCount(deriveEdits());
    const counter = document.getElementById("edit-count");
    counter.textContent = `${count.toLocaleString()} edit${count === 1 ? "" : "s"}`;
    counter.dataset.count = String(count);
    const undoButton = document.getElementById("undo");
    undoButton.disabled = !undoLog.length;
    undoButton.title = undoLog.length ? `undo ${undoLog[undoLog.length - 1].label}` : "nothing to undo";
  }

  function refresh(action, t0) {
    members = computeMembers();
    syncGalleries();
    updateSelection();
    syncEditBar();
    message("");
    persist();
    const domDone = performance.now();
    redrawMap()
      .then(nextFrame)
      .then(() => {
        const entry = record(action, t0, domDone);
        const map3d = redraw3d();
        if (map3d !== null) entry.map3d_ms = map3d;
      });
  }

  // ---- duplicates ----
  function showCluster(point) {
    filterGalleries(state.current[point]);
    document.getElementById("gallery-card").scrollIntoView();
  }

  function duplicateGroup(group, number) {
    const box = el("div", { class: "dup-group", "data-kind": group.kind });
    const what = {
      exact: "exact copies",
      partial: "with a partial copy (a crop)",
      mirrored: "with a mirrored copy",
      near: "near duplicates",
    }[group.kind];
    box.append(el("h3", {}, `group ${number}: ${group.rows.length} images, ${what}`));
    const grid = el("div", { class: "grid" });
    group.rows.forEach((point, index) => {
      const keep = point === group.keeper;
      const figure = el("figure", { class: keep ? "keeper" : "" });
      const img = image(point);
      img.addEventListener("click", () => showCluster(point));
      const [width, height] = group.sizes[index];
      const how = keep ? "keep" : `${group.kinds[index]}: ${group.evidence[index]}`;
      figure.append(img, el("figcaption", { title: how }, `${keep ? "keep, " : `${group.kinds[index]}, `}${width}×${height}`));
      grid.append(figure);
    });
    box.append(grid);
    return box;
  }

  function renderDuplicates() {
    const duplicates = data.duplicates;
    const box = document.getElementById("duplicates");
    box.append(el("p", { class: "muted" }, duplicates.headline));
    const list = el("div");
    // Thousands of groups would make the page slow to open; the first ones show, the rest on request.
    const show = (count) => {
      list.textContent = "";
      duplicates.groups.slice(0, count).forEach((group, index) => list.append(duplicateGroup(group, index + 1)));
    };
    show(SHOWN_GROUPS);
    box.append(list);
    if (duplicates.groups.length > SHOWN_GROUPS) {
      const more = el("button", {}, `show all ${duplicates.groups.length.toLocaleString()} groups`);
      more.addEventListener("click", () => { show(duplicates.groups.length); more.remove(); });
      box.append(more);
    }
  }

  // ---- quality flags ----
  function renderFlags() {
    const flags = data.flags;
    const box = document.getElementById("flags");
    box.append(el("p", { class: "muted" }, flags.headline));
    if (!flags.rows.length) return;
    const grid = el("div", { class: "grid flagged" });
    const filters = document.getElementById("flag-filters");
    let shown = SHOWN_FLAGGED;
    let only = null;
    const fill = () => {
      grid.textContent = "";
      const picked = flags.rows.map((point, index) => [point, flags.flags[index]])
        .filter(([, words]) => only === null || words.split(";").includes(only));
      for (const [point, words] of picked.slice(0, shown)) {
        const figure = el("figure", { "data-flags": words });
        const img = image(point);
        img.addEventListener("click", () => showCluster(point));
        figure.append(img, el("figcaption", { title: data.points.path[point] }, words.replaceAll(";", ", ")));
        grid.append(figure);
      }
      more.style.display = picked.length > shown ? "" : "none";
      more.textContent = `show all ${picked.length.toLocaleString()}`;
    };
    const choose = (flag, button) => {
      only = flag;
      for (const other of filters.querySelectorAll("button")) other.classList.toggle("active", other === button);
      fill();
    };
    const all = el("button", { class: "active", "data-flag": "all" }, "all flags");
    all.addEventListener("click", () => choose(null, all));
    filters.append(all);
    for (const [flag, count] of flags.counts) {
      const button = el("button", { "data-flag": flag }, `${flag} (${count.toLocaleString()})`);
      button.addEventListener("click", () => choose(flag, button));
      filters.append(button);
    }
    const more = el("button", {}, "");
    more.addEventListener("click", () => { shown = Infinity; fill(); });
    box.append(grid, more);
    fill();
  }

  // ---- maps ----
  const tip = document.getElementById("tip");
  const drawn = {};
  let drawCount = 0;

  function showTip(point, x, y) {
    tip.textContent = "";
    const src = thumbOf(point);
    if (src) tip.append(el("img", { src: src, alt: data.points.name[point] }));
    tip.append(el("div", { class: "tip-name" }, data.points.name[point]));
    tip.append(el("div", { class: "muted" }, displayName(state.current[point])));
    tip.style.left = `${Math.min(x + 14, window.innerWidth - 250)}px`;
    tip.style.top = `${Math.min(y + 14, window.innerHeight - 220)}px`;
    tip.style.display = "block";
  }

  function traces(coords, dims) {
    const type = dims === 3 ? "scatter3d" : N > WEBGL_ABOVE ? "scattergl" : "scatter";
    const size = dims === 3 ? 2.5 : Math.max(3, Math.min(9, 2400 / Math.sqrt(N + 1) / 8));
    return shownIds().filter((id) => (members.get(id) || []).length).map((id) => {
      const list = members.get(id);
      const pick = (axis) => list.map((p) => coords[axis][p]);
      const trace = {
        type, mode: "markers", name: titleOf(id), customdata: list, uid: `group${id}`,
        x: pick(0), y: pick(1), marker: { color: colourOf(id), size },
        hoverinfo: "none", meta: id,
      };
      if (dims === 3) trace.z = pick(2);
      return trace;
    });
  }

  function drawMap(divId, method, dims) {
    drawn[divId] = { method, dims };
    const coords = data.maps[method][`${dims}d`];
    const div = document.getElementById(divId);
    const layout = {
      margin: { l: 10, r: 10, t: 10, b: 10 }, showlegend: true, legend: { itemsizing: "constant" },
      xaxis: { visible: false }, yaxis: { visible: false }, hovermode: "closest",
      // A redraw after an edit keeps the zoom and the drag mode (lasso, box), and drops the selection drawn.
      uirevision: method, selectionrevision: ++drawCount,
      dragmode: (div._fullLayout && div._fullLayout.dragmode) || (dims === 3 ? "turntable" : "zoom"),
    };
    if (dims === 3) layout.scene = { xaxis: { visible: false }, yaxis: { visible: false }, zaxis: { visible: false } };
    const done = Plotly.react(div, traces(coords, dims), layout, { displaylogo: false, responsive: true });
    if (div.dataset.wired) return done;
    div.dataset.wired = "1";
    div.on("plotly_hover", (event) => {
      const point = event.points[0];
      const mouse = event.event || {};
      showTip(point.customdata, mouse.clientX || 0, mouse.clientY || 0);
    });
    div.on("plotly_unhover", () => { tip.style.display = "none"; });
    div.on("plotly_click", (event) => filterGalleries(event.points[0].data.meta));
    div.on("plotly_legendclick", (event) => {
      const id = event.data[event.curveNumber].meta;
      filterGalleries(activeCluster === id ? null : id);
      return false;
    });
    if (dims === 2) {
      // Lasso or box selection adds the points to the selection.
      div.on("plotly_selected", (event) => {
        if (!event || !event.points) return;
        const t0 = performance.now();
        for (const point of event.points) if (Number.isInteger(point.customdata)) selected.add(point.customdata);
        updateSelection();
        record("map select", t0, t0);
      });
    }
    return done;
  }

  // Draws the 2-D map again after an edit (the promise is settled when it is drawn).
  function redrawMap() {
    if (typeof Plotly === "undefined" || !drawn.map2d) return Promise.resolve();
    return Promise.resolve(drawMap("map2d", drawn.map2d.method, 2));
  }

  // The 3-D view is drawn again once the page has shown the rest, and only when it is on screen: scatter3d over
  // thousands of points takes long enough to hold up the next click.
  let stale3d = false;
  let onScreen3d = false;
  function redraw3d() {
    if (typeof Plotly === "undefined" || !drawn.map3d) return null;
    if (!onScreen3d) { stale3d = true; return null; }
    stale3d = false;
    const t0 = performance.now();
    drawMap("map3d", drawn.map3d.method, 3);
    return Math.round((performance.now() - t0) * 10) / 10;
  }
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((entries) => {
      onScreen3d = entries.some((entry) => entry.isIntersecting);
      if (onScreen3d && stale3d) redraw3d();
    }).observe(document.getElementById("map3d"));
  } else {
    onScreen3d = true;
  }

  function renderMapButtons(boxId, divId, dims) {
    const box = document.getElementById(boxId);
    const methods = Object.keys(data.maps).filter((m) => data.maps[m][`${dims}d`]);
    methods.forEach((method, index) => {
      const button = el("button", { "data-map": method, class: index === 0 ? "active" : "" }, method.toUpperCase());
      button.addEventListener("click", () => {
        for (const other of box.querySelectorAll("button")) other.classList.toggle("active", other === button);
        drawMap(divId, method, dims);
      });
      box.append(button);
    });
    if (methods.length) drawMap(divId, methods[0], dims);
    else document.getElementById(divId).textContent = "No map was made for this run.";
  }

  function renderPlots() {
    const box = document.getElementById("plots");
    for (const [name, src] of Object.entries(data.plots)) box.append(el("img", { src: src, alt: name, "data-plot": name }));
  }

  function renderErrors() {
    const box = document.getElementById("errors");
    if (!data.errors.length) { box.append(el("p", { class: "muted" }, "Every file found was used.")); return; }
    const table = el("table", { class: "errors" });
    const head = el("tr");
    for (const title of ["file", "reason", "detail"]) head.append(el("th", {}, title));
    table.append(head);
    for (const row of data.errors) {
      const line = el("tr");
      for (const cell of row) line.append(el("td", {}, cell));
      table.append(line);
    }
    box.append(table);
  }

  function renderEditBar() {
    document.getElementById("galleries").addEventListener("click", onGalleryClick);
    document.getElementById("move-apply").addEventListener("click", moveToChosen);
    document.getElementById("mark-outlier").addEventListener("click", () => moveSelection("doesn't belong", OUTLIERS));
    document.getElementById("mark-exclude").addEventListener("click", () => moveSelection("exclude", EXCLUDED));
    document.getElementById("clear-selection").addEventListener("click", clearSelection);
    document.getElementById("undo").addEventListener("click", undo);
    document.getElementById("save-edits").addEventListener("click", saveEdits);
  }

  renderSummary();
  restore();
  members = computeMembers();
  renderEditBar();
  syncGalleries();
  updateSelection();
  syncEditBar();
  renderDuplicates();
  renderFlags();
  renderPlots();
  renderErrors();
  if (typeof Plotly === "undefined") {
    document.getElementById("map2d").textContent = "The map needs JavaScript's Plotly bundle, which did not load.";
  } else {
    renderMapButtons("map-buttons", "map2d", 2);
    renderMapButtons("map3d-buttons", "map3d", 3);
  }
})();
