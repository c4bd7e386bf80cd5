// Raycart shop page: a client of the public API (POST /recommend, POST /feedback, POST /items,
// GET /items/{id}/similar) plus the page's helpers under /shop/api. Item text is only ever put
// into the page with textContent (never parsed as HTML), so a title cannot inject markup.
"use strict";

const K = 8;
const $ = (id) => document.getElementById(id);
const SHELF = 24; // catalogue cards per page (catalogue-only shop page)
// sessionToken: the shopper token of this page's anonymous session (an app with shopper tokens on
// mints one with each new session)
const state = { requestId: null, items: [], cards: {}, sessionId: null, sessionToken: null, user: "", seq: 0,
                browse: false, shelfSeq: 0 };

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function headers(admin) {
  const h = { "content-type": "application/json" };
  const key = (admin ? $("admin-key").value : "") || $("shopper-key").value;
  if (key) h["x-api-key"] = key.trim();
  if (state.sessionToken && !state.user) h["x-shopper-token"] = state.sessionToken;
  return h;
}

async function call(method, url, body, admin) {
  const r = await fetch(url, { method, headers: headers(admin), body: body ? JSON.stringify(body) : undefined });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : "";
    throw new Error(`${method} ${url.split("?")[0]}: HTTP ${r.status} ${detail}`);
  }
  return data;
}

function say(text, error) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

async function cardsFor(ids) {
  const want = ids.filter((x) => x && !(x in state.cards));
  if (want.length) {
    const got = await call("GET", "/shop/api/items?ids=" + want.map(encodeURIComponent).join(","));
    for (const c of got.items) state.cards[c.item_id] = c;
  }
  return ids.map((x) => state.cards[x] || { item_id: x, title: null });
}

function label(card) {
  return card.title || card.item_id;
}

// Cents; under 1, three significant digits (H&M's sample prices are scaled to fractions, where
// cents would show 0.00).
function price(card) {
  if (card.price === null || card.price === undefined) return "";
  return Math.abs(card.price) >= 1 ? card.price.toFixed(2) : card.price.toPrecision(3);
}

function reasonText(reason) {
  if (!reason) return "";
  const parts = [];
  if (reason.because_you_saw) {
    const c = state.cards[reason.because_you_saw];
    parts.push("because you saw " + (c ? label(c) : reason.because_you_saw));
  }
  if (reason.shared && reason.shared.length) parts.push("shared: " + reason.shared.join(", "));
  return parts.join(" · ") || "popular with shoppers like you";
}

function picture(card) {
  if (!card.image) return el("div", "noimg", card.category || "no picture"); // no broken-image icon
  const img = el("img");
  img.alt = label(card);
  img.loading = "eager";
  img.width = 200;
  img.height = 200;
  img.src = card.image;
  return img;
}

// A product card: picture, title, category and id, price (the catalogue's cards are only this).
function baseCard(itemId, card, cls) {
  const node = el("article", cls);
  node.dataset.itemId = itemId;
  node.appendChild(picture(card));
  node.appendChild(el("div", "title", label(card)));
  node.appendChild(el("div", "meta", [card.category, itemId].filter(Boolean).join(" · ")));
  node.appendChild(el("div", "price", price(card)));
  return node;
}

function renderCard(item, card, isNew) {
  const node = baseCard(item.item_id, card, "card" + (isNew ? " new" : ""));
  if (isNew) node.prepend(el("span", "badge", "new"));
  node.appendChild(el("div", "reason", reasonText(item.reason)));
  const actions = el("div", "actions");
  for (const [event, text, cls] of [["view", "view", ""], ["cart", "add to cart", ""], ["purchase", "buy", "buy"]]) {
    const b = el("button", cls, text);
    b.type = "button";
    b.dataset.event = event;
    b.addEventListener("click", () => feedback(item, event));
    actions.appendChild(b);
  }
  const sim = el("button", "similar", "similar items");
  sim.type = "button";
  sim.addEventListener("click", () => similar(item.item_id));
  actions.appendChild(sim);
  const pic = el("button", "use-picture", "use picture");
  pic.type = "button";
  pic.title = "use this item's picture in the admin form";
  pic.addEventListener("click", () => usePicture(item.item_id));
  actions.appendChild(pic);
  node.appendChild(actions);
  return node;
}

function thumb(card) {
  const node = el("div", "thumb");
  node.appendChild(picture(card));
  node.appendChild(el("div", "", label(card)));
  node.appendChild(el("div", "meta", [card.category, price(card)].filter(Boolean).join(" · ")));
  return node;
}

async function recommend(note) {
  const seq = state.seq; // another shopper picked meanwhile: this answer is dropped
  const body = { k: K };
  if (state.user) body.user_id = state.user;
  else if (state.sessionId) body.session_id = state.sessionId;
  const rec = await call("POST", "/recommend", body);
  if (rec.session_id) state.sessionId = rec.session_id;
  if (rec.session_token) state.sessionToken = rec.session_token;
  const ids = rec.items.map((i) => i.item_id);
  const because = rec.items.map((i) => i.reason && i.reason.because_you_saw).filter(Boolean);
  await cardsFor([...ids, ...because]);
  if (seq !== state.seq) return;
  const before = new Set(state.items.map((i) => i.item_id));
  const grid = $("cards");
  grid.replaceChildren(...rec.items.map((i) => renderCard(i, state.cards[i.item_id], before.size > 0 && !before.has(i.item_id))));
  grid.dataset.requestId = rec.request_id;
  grid.dataset.shopper = state.user || "anonymous"; // whose answer the cards are
  grid.removeAttribute("aria-busy");
  $("model-version").textContent = rec.model_version;
  $("policy-version").textContent = rec.policy_version;
  $("state").textContent = `${rec.state}, ${rec.live_history} live event(s)` + (rec.explore_harder ? ", exploring harder" : "");
  if (note) showChange(note, state.items, rec.items);
  state.requestId = rec.request_id;
  state.items = rec.items;
  say(`${rec.items.length} recommendations (request ${rec.request_id.slice(0, 8)})`);
}

function showChange(note, old, now) {
  const was = new Set(old.map((i) => i.item_id));
  const is = new Set(now.map((i) => i.item_id));
  const added = now.filter((i) => !was.has(i.item_id));
  const gone = old.filter((i) => !is.has(i.item_id));
  const box = $("change");
  box.replaceChildren(el("b", "", note));
  box.appendChild(el("div", "", `${added.length} new, ${gone.length} gone, ${now.length - added.length} kept.`));
  const list = el("ul");
  for (const i of added.slice(0, 4)) {
    list.appendChild(el("li", "", `new: ${label(state.cards[i.item_id] || i)} (${reasonText(i.reason)})`));
  }
  if (added.length > 4) list.appendChild(el("li", "", `... and ${added.length - 4} more (marked "new" below)`));
  if (gone.length) list.appendChild(el("li", "", "gone: " + gone.map((i) => label(state.cards[i.item_id] || i)).join(", ")));
  box.appendChild(list);
  box.hidden = false;
}

async function feedback(item, event) {
  try {
    const r = await call("POST", "/feedback", { request_id: state.requestId, item_id: item.item_id, event });
    const verb = { view: "viewed", cart: "added to cart", purchase: "bought", click: "clicked" }[event];
    const name = label(state.cards[item.item_id] || item);
    await recommend(`You ${verb} ${name} (${r.status}${r.learned ? ", the policy learned from it" : ""}). ` +
                    "The next answer:");
    await history();
  } catch (e) {
    say(e.message, true);
  }
}

async function similar(itemId) {
  try {
    const r = await call("GET", `/items/${encodeURIComponent(itemId)}/similar?k=6`);
    const cards = await cardsFor(r.similar.map((s) => s.item_id));
    $("similar-of").textContent = label(state.cards[itemId] || { item_id: itemId });
    $("similar").replaceChildren(...cards.map(thumb));
    $("similar-box").hidden = false;
  } catch (e) {
    say(e.message, true);
  }
}

async function history() {
  const seq = state.seq;
  if (!state.user) {
    $("history-box").hidden = true;
    return;
  }
  $("history-title").textContent = state.browse ? `Items of customer ${state.user}, newest first`
                                                : "Recently seen by this shopper";
  const r = await call("GET", `/shop/api/users/${encodeURIComponent(state.user)}/history?limit=8`);
  for (const c of r.items) state.cards[c.item_id] = c;
  if (seq !== state.seq) return;
  $("history").replaceChildren(...r.items.map(thumb));
  $("history-box").hidden = r.items.length === 0;
}

function usePicture(itemId) {
  const form = $("add-form");
  const card = state.cards[itemId];
  if (card && card.image_key) form.elements.image.value = card.image_key;
  form.elements.category.value = (card && card.category) || "";
  form.elements.image.focus();
}

async function addItem(ev) {
  ev.preventDefault();
  const f = ev.target.elements;
  const body = { item_id: f.item_id.value.trim() };
  for (const name of ["title", "category", "image"]) if (f[name].value.trim()) body[name] = f[name].value.trim();
  if (f.price.value) body.price = Number(f.price.value);
  const attrs = f.attributes.value.split(",").map((s) => s.trim()).filter(Boolean);
  if (attrs.length) body.attributes = attrs;
  const out = $("add-result");
  out.replaceChildren();
  try {
    await call("POST", "/items", body, true);
    out.appendChild(el("p", "", `Added ${body.item_id}. An anonymous session that looked at it is shown:`));
    const rec = await call("POST", "/recommend", { history: [body.item_id], k: K });
    const similarTo = await call("GET", `/items/${encodeURIComponent(body.item_id)}/similar?k=4`);
    const cards = await cardsFor([body.item_id, ...rec.items.map((i) => i.item_id), ...similarTo.similar.map((s) => s.item_id)]);
    const strip = el("div", "strip");
    strip.replaceChildren(...cards.map(thumb));
    out.appendChild(strip);
    const shown = await call("POST", "/recommend", { k: K, filters: body.category ? { category: body.category } : {} });
    const hit = shown.items.some((i) => i.item_id === body.item_id);
    out.appendChild(el("p", "hint", hit ? `${body.item_id} is being recommended to new shoppers (${body.category || "all"}).`
                                        : `${body.item_id} is in the index; not in this answer's top ${K}.`));
    await stats();
  } catch (e) {
    out.appendChild(el("p", "status error", e.message));
  }
}

async function stats() {
  if (state.browse || document.body.dataset.ready !== "1") return; // no live panel without a model or a key
  try {
    const s = await call("GET", "/shop/api/stats");
    $("stat-items").textContent = `${s.items} (${s.runtime_items} added at runtime)`;
    if (!s.kept) {
      $("stat-requests").textContent = "not counted here";
      return;
    }
    $("stat-requests").textContent = s.requests + (s.errors ? ` (${s.errors} refused)` : "");
    $("stat-p50").textContent = s.p50_ms === null ? "-" : `${s.p50_ms} ms`;
    const pct = (x) => (x === null ? "-" : (100 * x).toFixed(1) + "%");
    const num = (x) => (x === null ? "-" : x.toFixed(2));
    $("stat-rows").replaceChildren(...s.by_version.map((r) => {
      const tr = el("tr");
      for (const v of [r.model_version, r.policy_version, r.impressions, pct(r.ctr), num(r.reward_per_impression)]) {
        tr.appendChild(el("td", "", v));
      }
      return tr;
    }));
  } catch (e) {
    $("stat-requests").textContent = "unavailable";
  }
}

async function pickShopper() {
  state.user = $("shopper").value;
  state.items = [];
  state.seq += 1;
  $("who").textContent = state.user ? `shopper ${state.user}` : "an anonymous session";
  $("change").hidden = true;
  // the last shopper's cards go at once: a page never shows one shopper's answer under another's name
  const grid = $("cards");
  grid.replaceChildren();
  delete grid.dataset.shopper;
  delete grid.dataset.requestId;
  grid.setAttribute("aria-busy", "true");
  if (!state.browse) say(`Asking for ${state.user ? "shopper " + state.user : "an anonymous session"}'s recommendations...`);
  try {
    await history();
    if (!state.browse) await recommend(null);
  } catch (e) {
    say(e.message, true);
  }
}

// Catalogue-only shop page (raycart shop: a catalogue without a model): a page of the catalogue, by
// category, optionally only the items with a picture; no buttons that need a model.

async function shelf(offset) {
  const seq = ++state.shelfSeq; // a newer page asked meanwhile: this one is dropped
  const q = new URLSearchParams({ offset: String(offset), limit: String(SHELF), pictured: String($("shelf-pictured").checked) });
  if ($("shelf-category").value) q.set("category", $("shelf-category").value);
  try {
    const r = await call("GET", "/shop/api/catalogue?" + q);
    if (seq !== state.shelfSeq) return;
    for (const c of r.items) state.cards[c.item_id] = c;
    const grid = $("catalogue");
    grid.replaceChildren(...r.items.map((c) => baseCard(c.item_id, c, "card")));
    grid.dataset.offset = String(offset);
    $("shelf-range").textContent = r.total ? `${offset + 1}-${offset + r.items.length} of ${r.total}` : "nothing matches";
    $("shelf-prev").disabled = offset === 0;
    $("shelf-next").disabled = offset + r.items.length >= r.total;
  } catch (e) {
    say(e.message, true);
  }
}

function browseMode(info) {
  const n = (x) => x.toLocaleString("en");
  $("mode-note").textContent = `Browse only: ${n(info.items)} items (${n(info.with_picture)} with a picture) and ` +
    `${n(info.shoppers)} customers of this dataset. No model is loaded here, so nothing is recommended; ` +
    "raycart serve shows recommendations from a model trained on it.";
  const select = $("shelf-category");
  while (select.options.length > 1) select.remove(1); // keep "all"
  for (const c of info.categories) {
    const o = el("option");
    o.value = c.name;
    o.dataset.items = String(c.items);
    o.dataset.pictured = String(c.with_picture);
    select.appendChild(o);
  }
  const unlisted = info.categories_total - info.categories.length;
  if (unlisted > 0) {
    const o = el("option", "", `(${unlisted} smaller categories not listed)`);
    o.disabled = true;
    select.appendChild(o);
  }
  $("shelf-pictured").checked = info.with_picture > 0;
  categoryCounts();
  $("shopper").options[0].textContent = "no customer";
  $("shopper-label").textContent = "Customer";
}

// Each category's count as the checkbox filters: its items, or its items with a picture.
function categoryCounts() {
  const pictured = $("shelf-pictured").checked;
  for (const o of $("shelf-category").options) {
    if (o.dataset.items) o.textContent = `${o.value} (${pictured ? o.dataset.pictured : o.dataset.items})`;
  }
}

// Which window this is, the shopper list, then the first answer (or the first catalogue page). Run
// at start and again when a key is entered: with API keys on, the first try is refused (no key
// yet) and the page says so.
async function loadShoppers() {
  try {
    const info = await call("GET", "/shop/api/info");
    state.browse = info.mode === "browse";
    document.body.classList.toggle("browse", state.browse);
    if (state.browse) browseMode(info);
    // with API keys or shopper tokens the app lists no shoppers: this page is an anonymous session
    const picker = info.shopper_picker !== false;
    $("shopper-picker").hidden = !picker;
    const r = picker ? await call("GET", "/shop/api/users?limit=20") : { users: [] };
    const select = $("shopper");
    while (select.options.length > 1) select.remove(1); // keep the anonymous-session option
    for (const u of r.users) {
      const pictured = state.browse ? `, ${u.with_picture} with a picture` : "";
      const o = el("option", "", `${u.user_id} (${u.history} items${pictured}${u.top_category ? ", likes " + u.top_category : ""})`);
      o.value = u.user_id;
      select.appendChild(o);
    }
    const wanted = new URLSearchParams(location.search).get("user");
    if (wanted && r.users.some((u) => u.user_id === wanted)) select.value = wanted;
    say("", false);
    document.body.dataset.ready = "1";
    await pickShopper();
    if (state.browse) await shelf(0);
  } catch (e) {
    if (/HTTP 401/.test(e.message)) $("keys").open = true; // show where the key goes
    say(e.message, true);
  }
}

async function start() {
  $("shopper").addEventListener("change", pickShopper);
  $("shopper-key").addEventListener("change", loadShoppers);
  $("refresh").addEventListener("click", () => recommend("Asked again. The next answer:").catch((e) => say(e.message, true)));
  $("add-form").addEventListener("submit", addItem);
  $("shelf-category").addEventListener("change", () => shelf(0));
  $("shelf-pictured").addEventListener("change", () => {
    categoryCounts();
    shelf(0);
  });
  const shown = () => Number($("catalogue").dataset.offset || 0); // the page's offset, kept on the grid
  $("shelf-prev").addEventListener("click", () => shelf(Math.max(0, shown() - SHELF)));
  $("shelf-next").addEventListener("click", () => shelf(shown() + SHELF));
  await loadShoppers();
  await stats();
  setInterval(stats, 3000);
}

start();
