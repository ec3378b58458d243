/* xreg serve: keystroke review on /review/film/<sha> and /review/next.
 *
 * Progressive enhancement: the page's forms already work without this file
 * (a button per class, a submit that redirects to the next film). Here the
 * same forms are driven by keys and the next film is fetched as JSON, so a
 * decision costs one keystroke and no page load. Keys come from the page's
 * buttons (data-key), so the map shown is the map used.
 */
(function () {
  "use strict";
  var root = document.getElementById("fast-review");
  var form = document.getElementById("decide");
  var undoForm = document.getElementById("undo");
  if (!root || !form) { return; }
  var busy = false;
  var keys = {};
  form.querySelectorAll("button[data-key]").forEach(function (b) { keys[b.dataset.key] = b.value; });

  function $(id) { return document.getElementById(id); }
  function pct(v) { return v === null || v === undefined ? "" : (100 * v).toFixed(1) + "%"; }
  function prob(v) { return v === null || v === undefined ? "" : Number(v).toFixed(3); }
  function flagValue(v) { return v === 1 ? "1" : v === 0 ? "0" : ""; }
  function say(text) { $("flash").textContent = text; }

  function setLink(a, sha) {
    a.hidden = !sha;
    a.setAttribute("href", sha ? "/review/film/" + sha : "#");
  }

  function show(page) {
    var film = page.film;
    if (!film) { window.location.assign("/review/next"); return; }
    var sha = film.sha256;
    root.dataset.sha = sha;
    $("film").src = "/image/" + sha + "/preview.jpg";
    $("film-link").setAttribute("href", "/image/" + sha);
    $("model-answer").textContent = film.body_part;
    $("accept-label").textContent = film.body_part;
    $("model-confidence").textContent = pct(film.body_part_prob);
    $("model-reason").textContent = film.status + (film.review_reason ? " · " + film.review_reason : "");
    $("model-instrument").textContent = prob(film.instrument_prob);
    $("model-fracture").textContent = prob(film.fracture_prob);
    $("instrument").value = flagValue(film.instrument);
    $("fracture").value = flagValue(film.fracture);
    $("position").textContent = page.position
      ? "film " + page.position + " of " + page.total + " in the queue"
      : "reviewed film · " + page.total + " in the queue";
    form.setAttribute("action", "/review/film/" + sha);
    setLink($("prev"), page.prev);
    setLink($("next"), page.next);
    root.dataset.prev = page.prev || "";
    root.dataset.next = page.next || "";
    if (page.review) { say("Reviewed as " + page.review.body_part + " by " + page.review.reviewer + "."); }
    history.replaceState(null, "", "/review/film/" + sha);
    if (page.next) { new Image().src = "/image/" + page.next + "/preview.jpg"; }
  }

  function answer(response) {
    return response.json().then(function (body) {
      if (!response.ok) { throw new Error(body.error || response.statusText); }
      return body;
    });
  }

  function load(sha) {
    if (!sha) { return Promise.resolve(); }
    return fetch("/review/film/" + sha + "?format=json", {headers: {Accept: "application/json"}})
      .then(answer).then(function (page) { say(""); show(page); });
  }

  function run(work) {
    if (busy) { return; }
    busy = true;
    root.setAttribute("aria-busy", "true");
    work().catch(function (err) { say(err.message); }).then(function () {
      busy = false;
      root.removeAttribute("aria-busy");
    });
  }

  function post(action, fields) {
    var data = new FormData(fields.form);
    Object.keys(fields.extra).forEach(function (k) { data.set(k, fields.extra[k]); });
    return fetch(action + "?format=json", {method: "POST", body: data,
                                           headers: {Accept: "application/json"}}).then(answer);
  }

  function decide(extra) {
    run(function () {
      return post(form.getAttribute("action"), {form: form, extra: extra}).then(function (done) {
        if (!done.next) { window.location.assign("/review/next"); return null; }
        return load(done.next).then(function () { say("Recorded " + done.body_part + "."); });
      });
    });
  }

  function undo() {
    run(function () {
      return post("/reviews/undo", {form: undoForm, extra: {}}).then(function (done) {
        return load(done.undone.sha256).then(function () { say("Undid " + done.undone.body_part + "."); });
      });
    });
  }

  function flip(select) {
    select.value = select.value === "1" ? "0" : "1";
  }

  // A click on a button (or Enter on a focused one) goes the same fetch way.
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var b = event.submitter;
    if (b && b.name === "body_part") { decide({body_part: b.value, accept: ""}); }
    else { decide({accept: "1", body_part: ""}); }
  });
  if (undoForm) {
    undoForm.addEventListener("submit", function (event) { event.preventDefault(); undo(); });
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var t = event.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA")) { return; }
    var key = event.key;
    var handled = true;
    if (key === "Enter") { decide({accept: "1", body_part: ""}); }
    else if (key === "ArrowRight") { run(function () { return load(root.dataset.next); }); }
    else if (key === "ArrowLeft") { run(function () { return load(root.dataset.prev); }); }
    else if (key === "i") { flip($("instrument")); }
    else if (key === "x") { flip($("fracture")); }
    else if (key === "u") { if (undoForm) { undo(); } }
    else if (Object.prototype.hasOwnProperty.call(keys, key)) { decide({body_part: keys[key], accept: ""}); }
    else { handled = false; }
    if (handled) { event.preventDefault(); }
  });

  root.dataset.prev = ($("prev").hidden ? "" : $("prev").getAttribute("href").split("/").pop());
  root.dataset.next = ($("next").hidden ? "" : $("next").getAttribute("href").split("/").pop());
  root.dataset.ready = "1";
}());
