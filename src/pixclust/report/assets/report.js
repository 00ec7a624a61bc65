"use strict";
// The report's behaviour: maps (Plotly), hover thumbnails, cluster filters, galleries, duplicate groups, flags.
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

  // A cluster's name, and what it shows where the model could name it ("cluster_03: tabby / tiger cat").
  function titleOf(cluster) {
    return cluster.shows ? `${cluster.name}: ${cluster.shows}` : cluster.name;
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

  // ---- filters and galleries ----
  let activeCluster = null;

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

  function fillGrid(grid, members, all) {
    grid.textContent = "";
    const limit = SHOWN_TYPICAL + SHOWN_OUTLIERS;
    if (all || members.length <= limit) {
      for (const point of members) grid.append(image(point));
      return;
    }
    for (const point of members.slice(0, SHOWN_TYPICAL)) grid.append(image(point));
    grid.append(el("div", { class: "divider" }, `… ${members.length - limit} more … least typical:`));
    for (const point of members.slice(members.length - SHOWN_OUTLIERS)) grid.append(image(point));
  }

  function renderGalleries() {
    const filters = document.getElementById("filters");
    const all = el("button", { "data-cluster": "all", class: "active" }, "all clusters");
    all.addEventListener("click", () => filterGalleries(null));
    filters.append(all);
    const box = document.getElementById("galleries");
    for (const cluster of data.clusters) {
      const chip = el("button", { "data-cluster": String(cluster.id), class: "chip" });
      chip.append(el("span", { class: "swatch", style: `background:${cluster.colour}` }), document.createTextNode(titleOf(cluster)));
      chip.addEventListener("click", () => filterGalleries(cluster.id));
      filters.append(chip);

      const section = el("section", { class: "gallery", "data-cluster": String(cluster.id) });
      const heading = el("h3");
      heading.append(
        el("span", { class: "swatch", style: `background:${cluster.colour}` }),
        el("span", {}, titleOf(cluster)),
        el("span", { class: "muted size" }, `${cluster.size.toLocaleString()} images, most typical first`)
      );
      const grid = el("div", { class: "grid" });
      fillGrid(grid, cluster.members, false);
      section.append(heading, grid);
      if (cluster.members.length > SHOWN_TYPICAL + SHOWN_OUTLIERS) {
        const more = el("button", {}, `show all ${cluster.size.toLocaleString()}`);
        more.addEventListener("click", () => { fillGrid(grid, cluster.members, true); more.remove(); });
        section.append(more);
      }
      box.append(section);
    }
  }

  // ---- duplicates ----
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
      img.addEventListener("click", () => {
        filterGalleries(data.points.cluster[point]);
        document.getElementById("gallery-card").scrollIntoView();
      });
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
        img.addEventListener("click", () => {
          filterGalleries(data.points.cluster[point]);
          document.getElementById("gallery-card").scrollIntoView();
        });
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

  function showTip(point, x, y) {
    tip.textContent = "";
    const src = thumbOf(point);
    if (src) tip.append(el("img", { src: src, alt: data.points.name[point] }));
    tip.append(el("div", { class: "tip-name" }, data.points.name[point]));
    tip.append(el("div", { class: "muted" }, data.clusters.find((c) => c.id === data.points.cluster[point]).name));
    tip.style.left = `${Math.min(x + 14, window.innerWidth - 250)}px`;
    tip.style.top = `${Math.min(y + 14, window.innerHeight - 220)}px`;
    tip.style.display = "block";
  }

  function traces(coords, dims) {
    const n = data.points.cluster.length;
    const type = dims === 3 ? "scatter3d" : n > WEBGL_ABOVE ? "scattergl" : "scatter";
    const size = dims === 3 ? 2.5 : Math.max(3, Math.min(9, 2400 / Math.sqrt(n + 1) / 8));
    return data.clusters.map((cluster) => {
      const pick = (axis) => cluster.members.map((p) => coords[axis][p]);
      const trace = {
        type, mode: "markers", name: titleOf(cluster), customdata: cluster.members,
        x: pick(0), y: pick(1), marker: { color: cluster.colour, size },
        hoverinfo: "none", meta: cluster.id,
      };
      if (dims === 3) trace.z = pick(2);
      return trace;
    });
  }

  function drawMap(divId, method, dims) {
    const coords = data.maps[method][`${dims}d`];
    const layout = {
      margin: { l: 10, r: 10, t: 10, b: 10 }, showlegend: true, legend: { itemsizing: "constant" },
      xaxis: { visible: false }, yaxis: { visible: false }, hovermode: "closest",
    };
    if (dims === 3) layout.scene = { xaxis: { visible: false }, yaxis: { visible: false }, zaxis: { visible: false } };
    const div = document.getElementById(divId);
    Plotly.react(div, traces(coords, dims), layout, { displaylogo: false, responsive: true });
    if (div.dataset.wired) return;
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

  renderSummary();
  renderGalleries();
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
