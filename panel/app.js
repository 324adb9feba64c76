// The control panel's views. A tenant admin sees its own tenant (overview,
// backups, where its data is, support access, audit, tokens, removal); an
// operator sees the host (tenants, regions, drills, staff). Every view reads
// the API afresh when shown and after each action; nothing but the last
// verified audit checkpoint is stored in the browser. The DOM is built from
// text only, so nothing the host returns is ever read as HTML.

import { currentSession, forgetSession, get, post, remove, signIn, signOut, tenantPath, whenSessionEnds } from "./api.js";
import { verifyBundle } from "./verify.js";

const TENANT_VIEWS = {
  overview: ["Overview", overview],
  backups: ["Backups", backups],
  copies: ["Where my data is", copies],
  access: ["Support access", access],
  audit: ["Audit", audit],
  tokens: ["Tokens", tenantTokens],
  webhooks: ["Webhooks", webhooks],
  removal: ["Removal", removal],
};
const OPERATOR_VIEWS = {
  tenants: ["Tenants", tenants],
  regions: ["Regions", regions],
  drills: ["Restore drills", drills],
  staff: ["Staff and approvals", staff],
};

/// An X25519 recipient of the age tool: "age1" and 58 bech32 letters.
const AGE_RECIPIENT = /^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$/;

let session = null;
let views = {};
let current = null;
/// Counts the views drawn, so that a slow answer never draws over a newer view.
let drawn = 0;

const byId = (id) => document.getElementById(id);
const tenant = () => session.tenant;

whenSessionEnds((message) => signedOut(`Your session has ended: ${message}`));
setInterval(tickCountdowns, 1000);
boot();

async function boot() {
  try {
    const found = await currentSession();
    if (found) await start(found);
    else signedOut();
  } catch (error) {
    signedOut();
    complain(error);
  }
}

// ---- signing in and out ----

function signedOut(note) {
  session = null;
  current = null;
  forgetSession();
  byId("who").replaceChildren();
  byId("nav").replaceChildren();
  const input = el("input", { id: "token", type: "password", "data-test": "token-input", autocomplete: "off", required: true });
  const button = el("button", { type: "submit", "data-test": "sign-in" }, "Sign in");
  const form = el(
    "form",
    { class: "sign-in", onsubmit: (event) => submitToken(event, input, button) },
    el("h2", {}, "Sign in"),
    el("p", {}, "Paste a tenant admin or operator token. The host exchanges it for a short session; this page does not keep the token."),
    el("label", { for: "token" }, "Token"),
    input,
    button,
  );
  byId("view").replaceChildren(form);
  if (note) say(note);
  else quiet();
  input.focus();
}

async function submitToken(event, input, button) {
  event.preventDefault();
  const token = input.value.trim();
  // The token leaves the page at once: only the request below carries it.
  input.value = "";
  if (!token) return;
  button.disabled = true;
  quiet();
  try {
    await start(await signIn(token));
  } catch (error) {
    complain(error);
    button.disabled = false;
  }
}

async function start(signedIn) {
  session = signedIn;
  quiet();
  views = session.role === "operator" ? OPERATOR_VIEWS : session.role === "tenant-admin" && session.tenant ? TENANT_VIEWS : {};
  byId("nav").replaceChildren(
    ...Object.entries(views).map(([name, [title]]) =>
      el("button", { type: "button", "data-test": `nav-${name}`, "data-nav": name, onclick: () => (quiet(), show(name)) }, title),
    ),
  );
  const wanted = location.hash.slice(1);
  const first = Object.hasOwn(views, wanted) ? wanted : Object.keys(views)[0];
  if (first) await show(first);
  else byId("view").replaceChildren(el("p", {}, `The control panel is for tenant admins and operators, not for a ${session.role}.`));
  // The header comes last, so that a page with a sign-out button is a page
  // whose first view is drawn.
  const who = session.role === "operator" ? `Operator ${session.identity ?? ""}` : "Tenant admin";
  byId("who").replaceChildren(
    el("span", {}, who, session.name ? ` (token “${session.name}”)` : "", " · session until ", when(session.expires_at)),
    el("button", { type: "button", "data-test": "sign-out", onclick: leave }, "Sign out"),
  );
}

async function leave() {
  try {
    await signOut();
  } catch (error) {
    if (error.status !== 401) return complain(error);
  }
  signedOut("You are signed out.");
}

// ---- drawing a view, and acting in one ----

async function show(name) {
  const ticket = ++drawn;
  current = name;
  history.replaceState(null, "", `#${name}`);
  for (const button of byId("nav").children) button.setAttribute("aria-current", String(button.dataset.nav === name));
  const [title, render] = views[name];
  let content;
  try {
    content = await render();
  } catch (error) {
    if (error.status === 401) return; // the sign-in form is already drawn
    content = [el("p", { class: "error" }, error.message)];
  }
  if (ticket !== drawn || session === null) return;
  byId("view").replaceChildren(el("section", { "data-view": name }, el("h2", {}, title), ...content));
}

/// An event handler that runs `work`, then draws the view again; on an
/// error it shows the host's message and enables the control again.
function act(work) {
  return async (event) => {
    event.preventDefault();
    const control = event.submitter ?? event.currentTarget;
    control.disabled = true;
    quiet();
    try {
      await work();
      await show(current);
    } catch (error) {
      complain(error);
      control.disabled = false;
    }
  };
}

function action(label, test, work, attributes = {}) {
  return el("button", { type: "button", "data-test": test, ...attributes, onclick: act(work) }, label);
}

// ---- tenant admin: overview ----

async function overview() {
  const [t, list] = await Promise.all([get(tenantPath(tenant())), get(tenantPath(tenant(), "backups")).catch(() => null)]);
  const durability = t.durability ?? {};
  const rows = [
    ["Name", t.name],
    ["State", stateWords(t)],
    ["Hosting region", t.region],
    ["Schema", `${t.schema}, version ${t.schema_version}`],
    ["Created", when(t.created_at)],
    ["Records", recordWords(t, list)],
    ["Durability", durabilityWords(durability)],
  ];
  if (durability.change_log) {
    const lossWindow = durationWords(durability.loss_window_seconds);
    rows.push(["Loss window", `${lossWindow}: the writes not yet in every backup region, which losing this host now would cost`]);
    rows.push(["History", `restore to any point of the last ${durability.retention_days} days`]);
  }
  if (t.copy_of) rows.push(["Made from", `tenant ${t.copy_of.tenant} (${t.copy_of.kind}, `, when(t.copy_of.at), ")"]);
  if (t.proposed_move) rows.push(["Proposed move", `to region ${t.proposed_move.region}, waiting for your approval`]);
  return [facts(rows)];
}

function recordWords(t, list) {
  if (t.collections && typeof t.collections === "object") {
    return Object.entries(t.collections).map(([name, count]) => `${name}: ${count}`).join(", ");
  }
  const last = list?.backups.filter((b) => b.state === "done" && b.records !== undefined).sort(newestFirst)[0];
  if (!last) return "not counted yet: counts come with the first backup";
  return [`${last.records} in all at the last backup, `, when(last.created_at)];
}

function durabilityWords(d) {
  const local = "local: a write is acknowledged once on this host's disk";
  if (d.mode === "replicated") return `replicated: a write is acknowledged once it is in ${d.regions_per_write ?? "the"} backup regions`;
  return d.change_log ? `${local}; the change log ships it to the backup regions within seconds` : `${local}; only backups leave this host`;
}

function stateWords(t) {
  return t.state === "deactivated" ? ["removal requested: destroyed after ", when(t.destroy_after)] : t.state;
}

// ---- tenant admin: backups ----

async function backups() {
  const list = await get(tenantPath(tenant(), "backups"));
  const restoreArea = el("div", { class: "panel" });
  const listArea = el("div");
  const fill = (answer) => {
    listArea.replaceChildren(backupTable(answer.backups, restoreArea));
    // While a backup runs, only its list is read again: what was typed elsewhere stays.
    if (answer.backups.some((b) => b.state === "pending" || b.state === "running")) {
      setTimeout(async () => listArea.isConnected && fill(await get(tenantPath(tenant(), "backups")).catch(() => answer)), 2000);
    }
  };
  fill(list);
  const backUp = async () => {
    const started = await post(tenantPath(tenant(), "backups"));
    say(`Backup ${started.id} started; it is listed below with its state in each region.`);
  };
  return [el("p", {}, action("Back up now", "backup-now", backUp)), listArea, restoreArea, exportForm(), pointInTimeForm(list.change_log)];
}

function backupTable(list, restoreArea) {
  const rows = list
    .slice()
    .sort(newestFirst)
    .map((b) =>
      row({ "data-test": "backup-row", "data-backup-id": b.id }, [
        when(b.created_at),
        b.kind,
        b.error ? `${b.state}: ${b.error}` : b.state,
        b.records ?? "—",
        b.size === undefined ? "—" : bytesWords(b.size),
        regionStates(b.regions),
        when(b.retain_until),
        b.state === "done" ? el("button", { type: "button", "data-test": "restore-start", onclick: () => restoreForm(b, restoreArea) }, "Restore…") : "",
      ]),
    );
  return table(["Taken", "Kind", "State", "Records", "Size", "Regions", "Kept until", ""], rows, "No backups yet.");
}

function restoreForm(backup, area) {
  const name = el("input", { type: "text", "data-test": "restore-name", required: true, maxlength: 200 });
  const restore = async () => restored(await post(tenantPath(tenant(), "backups", backup.id, "restore"), { name: name.value.trim() }));
  area.replaceChildren(
    el(
      "form",
      { onsubmit: act(restore) },
      el("h3", {}, "Restore into a new tenant"),
      el("p", {}, "The backup taken ", when(backup.created_at), " becomes a new tenant with the same admins; this one is left as it is."),
      field("Name of the new tenant", name),
      el("button", { type: "submit", "data-test": "restore-backup" }, "Restore"),
    ),
  );
  name.focus();
}

function exportForm() {
  const plain = tenantPath(tenant(), "export");
  const unencrypted = "A tar archive compressed with zstd: open it with tar --zstd -xf.";
  const link = el("a", { href: plain, download: "", "data-test": "export-download", class: "button" }, "Download the portable export");
  const note = el("p", { class: "quiet" }, unencrypted);
  const recipient = el("input", { type: "text", "data-test": "export-recipient", placeholder: "age1…", autocomplete: "off" });
  recipient.addEventListener("input", () => {
    const value = recipient.value.trim();
    if (!value) {
      link.href = plain;
      note.textContent = unencrypted;
    } else if (AGE_RECIPIENT.test(value)) {
      link.href = `${plain}?recipient=${encodeURIComponent(value)}`;
      note.textContent = "Encrypted to this recipient: open it with age -d, then tar --zstd -xf.";
    } else {
      link.removeAttribute("href");
      note.textContent = "This is not an age recipient (age1 followed by 58 letters and digits).";
    }
  });
  return el("div", { class: "panel" }, el("h3", {}, "Export"), field("Encrypt to an age recipient (optional)", recipient), link, note);
}

function pointInTimeForm(changeLog) {
  if (!changeLog?.change_log) {
    return el("p", { class: "quiet" }, "This host keeps no change log, so a restore goes back to a backup, not to any moment.");
  }
  const name = el("input", { type: "text", "data-test": "restore-point-name", required: true, maxlength: 200 });
  const at = el("input", { type: "datetime-local", step: "1", "data-test": "restore-point-at" });
  const restore = async () => {
    const body = { name: name.value.trim() };
    if (at.value) body.at = new Date(at.value).toISOString().replace(/\.\d{3}Z$/, "Z");
    restored(await post(tenantPath(tenant(), "restore"), body));
  };
  return el(
    "form",
    { class: "panel", onsubmit: act(restore) },
    el("h3", {}, "Restore to a point in time"),
    el("p", {}, `Any moment of the last ${changeLog.retention_days} days (your local time; empty: the latest write) becomes a new tenant; this one is left as it is.`),
    field("Name of the new tenant", name),
    field("Moment", at),
    el("button", { type: "submit", "data-test": "restore-point" }, "Restore"),
  );
}

function restored(answer) {
  const counts = Object.entries(answer.counts ?? {}).map(([c, n]) => `${c} ${n}`).join(", ");
  say(
    `Restored into the new tenant “${answer.name}” (${answer.id}): ${answer.records} records${counts ? ` (${counts})` : ""}.`,
    answer.restored_to ? [" As it was at ", when(answer.restored_to.at), "."] : "",
    answer.admin_token ? [" Its admin token, shown once: ", el("code", { "data-test": "new-admin-token" }, answer.admin_token)] : "",
  );
}

// ---- tenant admin: where my data is ----

async function copies() {
  const c = await get(tenantPath(tenant(), "copies"));
  const drill = c.last_drill;
  return [
    facts([
      ["Hosting region", c.hosting_region],
      ["The database", `${c.database.state}, in region ${c.database.region}${c.database.present ? "" : " (no longer on disk)"}`],
      ["Backup regions", c.backup_regions.join(", ") || "none"],
    ]),
    el("h3", {}, "Backups and the regions holding them"),
    table(
      ["Taken", "Kind", "Regions", "Kept until", "Still on this host"],
      c.backups.map((b) => [when(b.created_at), b.kind, regionStates(b.regions), when(b.retain_until), b.on_host_spool ? "yes" : "no"]),
      c.backups_erased ? "Every backup has been erased." : "No backups yet.",
    ),
    el("h3", {}, "Change log"),
    changeLogWords(c.change_log),
    el("h3", {}, "Tenants made from this one"),
    table(
      ["Name", "Id", "How", "Made by", "When", "State", "If this tenant is removed"],
      c.copies.map((copy) => [copy.name, copy.id, copy.kind, copy.made_by, when(copy.at), copy.state, copy.on_removal]),
      "None: no backup of this tenant was restored or imported elsewhere.",
    ),
    el("h3", {}, "Last restore drill"),
    drill
      ? facts([
          ["When", when(drill.at)],
          ["Outcome", drill.error ? `${drill.outcome}: ${drill.error}` : drill.outcome],
          ["Backup", drill.backup_id, " taken ", when(drill.backup_created_at)],
          ["Read from region", drill.region],
          ["Records checked", drill.records],
        ])
      : el("p", { class: "quiet" }, "No restore drill has run for this tenant yet."),
  ];
}

function changeLogWords(log) {
  if (!log?.change_log) return el("p", { class: "quiet" }, "This host keeps no change log; only backups leave it.");
  const safe = Object.entries(log.newest_safe_write ?? {}).map(([region, point]) => [region, point.sequence, when(point.at)]);
  return [
    el("p", {}, "Every write also goes to a sealed change log in each backup region. The newest write safe in each:"),
    table(["Region", "Write", "At"], safe, "No write shipped yet."),
  ];
}

// ---- tenant admin: support access ----

async function access() {
  const log = await get(tenantPath(tenant(), "access-log"));
  const urgentFirst = (a, b) => Number(b.emergency) - Number(a.emergency) || a.requested_at.localeCompare(b.requested_at);
  const inState = (state) => log.grants.filter((g) => g.state === state).sort(urgentFirst);
  const closed = log.grants.filter((g) => g.state !== "pending" && g.state !== "active").reverse();
  const uses = log.events.filter((e) => e.kind === "grant.access").reverse();
  const recoveries = log.admin_recoveries ?? [];
  return [
    el("h3", {}, "Waiting for your decision"),
    grantTable(inState("pending"), "No request is waiting."),
    el("h3", {}, "Active now"),
    grantTable(inState("active"), "No one has access now."),
    el("h3", {}, "Every access through a grant"),
    table(["When", "Who", "Grant", "What"], uses.map((e) => [when(e.at), actorWords(e.actor), e.grant, detailsWords(e.details)]), "No one has used a grant."),
    el("h3", {}, "Earlier requests"),
    grantTable(closed, "None."),
    recoveries.length ? [el("h3", {}, "Admin recoveries by operators"), recoveryTable(recoveries)] : "",
  ];
}

function grantTable(grants, empty) {
  const rows = grants.map((g) =>
    row({ "data-test": "grant-row", "data-grant-id": g.id, "data-state": g.state, class: g.emergency ? "emergency" : "" }, [
      [g.emergency ? el("strong", { class: "badge" }, "EMERGENCY") : "", " ", g.requester],
      g.reason,
      g.ticket,
      g.scope === "read-write" ? "read and write" : "read only",
      g.collections?.length ? g.collections.join(", ") : "all collections",
      grantTime(g),
      grantButtons(g),
    ]),
  );
  return table(["Engineer", "Reason", "Ticket", "Scope", "Collections", "Time", ""], rows, empty);
}

function grantTime(g) {
  if (g.state === "pending") return [`${g.duration_minutes} min once approved; the request lapses `, when(g.expires_at)];
  if (g.state === "active") return [countdown(g.active_until), " left"];
  if (g.closed) return [`${g.closed.because} `, when(g.closed.at), g.closed.by ? ` by ${g.closed.by}` : ""];
  return g.state;
}

function grantButtons(g) {
  const decide = (verb) => () => post(`/v1/access-requests/${encodeURIComponent(g.id)}/${verb}`);
  if (g.state === "active") return action("Revoke", "revoke", decide("revoke"), { class: "danger" });
  if (g.state !== "pending") return "";
  const deny = action("Deny", "deny", decide("deny"), { class: "danger" });
  if (!g.emergency) return [action("Approve", "approve", decide("approve")), " ", deny];
  return [el("span", { class: "quiet" }, `Decided by two operators (${g.approvals?.length ?? 0} of 2 so far). `), deny];
}

function recoveryTable(recoveries) {
  const cancel = (r) => () => post(`/v1/admin-recoveries/${encodeURIComponent(r.id)}/cancel`);
  const rows = recoveries.map((r) => [
    r.requested_by,
    r.reason,
    r.ticket,
    r.state,
    ["ready ", when(r.ready_at)],
    r.state === "waiting" || r.state === "ready" ? action("Cancel", "cancel-recovery", cancel(r)) : "",
  ]);
  return table(["Asked by", "Reason", "Ticket", "State", "Carried out", ""], rows, "None.");
}

// ---- tenant admin: audit ----

async function audit() {
  const log = await get(tenantPath(tenant(), "access-log"));
  const events = log.events.slice().reverse();
  return [
    verifyPanel(),
    el("h3", {}, "Access log"),
    table(
      ["When", "What", "Who", "Grant", "Details"],
      events.map((e) => [when(e.at), e.kind, actorWords(e.actor), e.grant ?? "—", detailsWords(e.details)]),
      "Nothing logged yet.",
    ),
  ];
}

function verifyPanel() {
  const seenKey = `coffer.audit-seen.${tenant()}`;
  const status = el("p", { "data-test": "audit-status", class: "status" }, "not checked yet");
  const detail = el("p", { class: "quiet" }, lastVerifiedWords(remembered(seenKey)));
  const intro = el(
    "p",
    {},
    "Check in this browser that the host's log of everything done to this tenant is signed by the host's published key, and was not rewritten since your last check.",
  );
  if (!window.isSecureContext || !globalThis.crypto?.subtle) {
    const why =
      "Verification cannot run here: the page was opened over plain http from another machine, and browsers give pages the cryptography it needs (WebCrypto) only over https or on this machine itself. Open the panel over https.";
    const button = el("button", { type: "button", "data-test": "audit-verify", disabled: true }, "Verify");
    return el("div", { class: "panel" }, intro, el("p", { class: "error", "data-test": "audit-insecure" }, why), button, status);
  }
  const button = el("button", { type: "button", "data-test": "audit-verify" }, "Verify");
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.className = "status";
    status.textContent = "checking…";
    const before = remembered(seenKey);
    const started = performance.now();
    const result = await fetchAndVerify(before);
    const took = Math.round(performance.now() - started);
    if (result.ok) {
      const keyChanged = before?.key && before.key !== result.key ? " The host's key changed since your last check." : "";
      localStorage.setItem(seenKey, JSON.stringify({ size: result.size, root: result.root, key: result.key, at: new Date().toISOString() }));
      status.textContent = `verified ${result.entries} entries at tree size ${result.size}`;
      status.classList.add("good");
      detail.textContent = `Checked in ${took} ms against the key ${result.key}.${keyChanged} ${lastVerifiedWords(remembered(seenKey))}`;
    } else {
      status.textContent = result.waiting ? `not checked yet: ${result.reason}` : `FAILED: ${result.reason}`;
      status.classList.add(result.waiting ? "quiet" : "bad");
    }
    button.disabled = false;
  });
  return el("div", { class: "panel" }, intro, button, status, detail);
}

async function fetchAndVerify(before) {
  let publicKey;
  let bundle;
  try {
    publicKey = await get("/v1/audit/public-key");
    bundle = await get(tenantPath(tenant(), "audit-proof") + (before ? `?seen=${before.size}` : ""));
  } catch (error) {
    if (error.status === 503) return { ok: false, waiting: true, reason: error.message };
    if (error.status === 422 && before) {
      return { ok: false, reason: `the host cannot prove that its log still holds the tree of size ${before.size} you verified before (${error.message})` };
    }
    return { ok: false, reason: `the proof could not be fetched: ${error.message}` };
  }
  return { ...(await verifyBundle(bundle, publicKey, before, tenant())), key: publicKey.key };
}

/// The checkpoint this browser verified last for a tenant, or null.
function remembered(key) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    if (Number.isSafeInteger(value?.size) && value.size > 0 && /^[0-9a-f]{64}$/.test(value.root)) return value;
  } catch {
    // Nothing usable stored: a first check.
  }
  return null;
}

function lastVerifiedWords(last) {
  if (!last) return "Not verified in this browser before.";
  return `Last verified in this browser: tree size ${last.size}, root ${last.root.slice(0, 16)}…, ${new Date(last.at).toLocaleString()}.`;
}

// ---- tenant admin: tokens and removal ----

async function tenantTokens() {
  const { tokens } = await get("/v1/tokens");
  const name = el("input", { type: "text", "data-test": "token-name", required: true, maxlength: 200 });
  const mint = async () => {
    const minted = await post("/v1/tokens", { role: "tenant-admin", name: name.value.trim() });
    const once = `New admin token “${minted.name}”. Copy it now: it is shown once, and the host keeps only its hash. `;
    say(once, el("code", { "data-test": "minted-token" }, minted.token));
  };
  return [
    tokenTable(tokens, false),
    el(
      "form",
      { class: "panel", onsubmit: act(mint) },
      el("h3", {}, "Make another admin token"),
      field("Name (who will use it)", name),
      el("button", { type: "submit", "data-test": "mint-token" }, "Make token"),
    ),
  ];
}

// ---- tenant admin: webhooks ----

async function webhooks() {
  const { webhooks: hooks } = await get(tenantPath(tenant(), "webhooks"));
  const logs = await Promise.all(hooks.map((h) => get(tenantPath(tenant(), "webhooks", h.id, "deliveries"))));
  const url = el("input", { type: "url", "data-test": "webhook-url", required: true, placeholder: "https://…" });
  const register = async () => {
    const made = await post(tenantPath(tenant(), "webhooks"), { url: url.value.trim() });
    say("Webhook registered. Its signing secret is shown once; give it to the receiver now: ", el("code", { "data-test": "webhook-secret" }, made.secret));
  };
  const sections = hooks.map((h, i) =>
    el(
      "div",
      { class: "panel", "data-test": "webhook-row", "data-webhook-id": h.id },
      el("h3", {}, h.url),
      el("p", { class: "quiet" }, h.disabled ? `Disabled ${h.disabled.at}: ${h.disabled.reason}` : h.failing_since ? ["Failing since ", when(h.failing_since)] : "Delivering."),
      action("Send a test", "webhook-test", () => post(tenantPath(tenant(), "webhooks", h.id, "test"))),
      action("Remove", "webhook-remove", () => remove(tenantPath(tenant(), "webhooks", h.id))),
      table(
        ["Event", "Audit entry", "State", "Attempts", "Last attempt", "Last error"],
        logs[i].deliveries.map((d) =>
          row({ "data-test": "delivery-row", "data-state": d.state }, [d.event, d.audit_seq ?? "—", d.state, String(d.attempts), d.last_attempt_at ? when(d.last_attempt_at) : "—", d.last_error ?? "—"]),
        ),
        "Nothing sent yet.",
      ),
    ),
  );
  return [
    el("p", {}, "Every access request and decision, emergency, admin recovery, removal, token, copy and key rotation of this tenant is sent to these addresses, signed the Standard Webhooks way, with the audit entry it comes from."),
    ...sections,
    el("form", { class: "panel", onsubmit: act(register) }, el("h3", {}, "Register a webhook"), field("Address (https://)", url), el("button", { type: "submit", "data-test": "webhook-register" }, "Register")),
  ];
}

async function removal() {
  const t = await get(tenantPath(tenant()));
  if (t.state === "deactivated") {
    const reactivate = async () => {
      await post(tenantPath(tenant(), "reactivate"));
      say("The database is active again.");
    };
    return [
      el("p", {}, "Removal was requested. The database is kept, but not served, until ", when(t.destroy_after), "; then its key is shredded and it is gone."),
      el("p", { class: "big" }, "Destroyed in ", countdown(t.destroy_after)),
      action("Keep it: reactivate", "reactivate", reactivate),
    ];
  }
  if (t.state !== "active") return [el("p", {}, `This tenant is ${t.state}.`)];
  const confirm = el("input", { type: "text", "data-test": "remove-confirm", autocomplete: "off" });
  const request = async () => {
    const answer = await remove(tenantPath(tenant()));
    say("Removal requested. The database will be destroyed after ", when(answer.destroy_after), " unless you reactivate it before then.");
  };
  const button = action("Request removal", "remove-tenant", request, { disabled: true, class: "danger" });
  confirm.addEventListener("input", () => {
    button.disabled = confirm.value !== t.name;
  });
  return [
    el("p", {}, "Removal stops serving the database at once, and destroys it when the grace period ends; until then you can reactivate it here. Backups go when their retention ends. Download an export first to keep the data."),
    field(`Type the tenant's name, ${t.name}, to confirm`, confirm),
    button,
  ];
}

// ---- operator views ----

async function tenants() {
  const { tenants: list } = await get("/v1/tenants");
  const rows = list
    .slice()
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((t) => [t.name, t.id, stateWords(t), t.region, `${t.schema} v${t.schema_version}`, when(t.created_at)]);
  return [table(["Name", "Id", "State", "Region", "Schema", "Created"], rows, "No tenants.")];
}

async function regions() {
  const answer = await get("/v1/regions");
  const rows = answer.regions.map((r) => [
    r.region,
    r.store,
    r.behind,
    r.failed,
    r.deleting,
    durationWords(r.lag_seconds),
    r.log_behind,
    durationWords(r.log_lag_seconds),
    when(r.oldest_unreplicated),
    r.last_error ?? "—",
  ]);
  const headings = ["Region", "Store", "Backups behind", "Failed", "Being deleted", "Lag", "Change log behind", "Change log lag", "Oldest not replicated", "Last error"];
  return [el("p", {}, `This host serves region ${answer.host_region}. Its backups go to:`), table(headings, rows, "No backup regions.")];
}

async function drills() {
  const [{ drills: list }, { tenants: known }] = await Promise.all([get("/v1/drills"), get("/v1/tenants")]);
  const names = new Map(known.map((t) => [t.id, t.name]));
  const rows = list.map((d) =>
    row({ class: d.outcome === "failed" ? "failed" : "" }, [
      names.get(d.tenant) ?? d.tenant,
      when(d.at),
      d.region,
      when(d.backup_created_at),
      d.outcome,
      d.records,
      `${d.duration_ms} ms`,
      d.error ?? "—",
    ]),
  );
  return [table(["Tenant", "When", "Region", "Backup taken", "Outcome", "Records", "Took", "Error"], rows, "No restore drill has run yet.")];
}

async function staff() {
  const [{ tokens, identities = [] }, pending] = await Promise.all([get("/v1/tokens"), get("/v1/approvals")]);
  const waiting = identities.filter((i) => i.state === "pending-approval").map((i) => [i.name, i.role, i.created_by, when(i.created)]);
  const emergencies = pending.emergency_requests.map((g) =>
    row({ "data-test": "grant-row", "data-grant-id": g.id, "data-state": g.state }, [
      g.tenant,
      g.requester,
      g.reason,
      g.ticket,
      `${(g.approvals ?? []).length} of 2`,
      action("Approve", "approve", () => post(`/v1/access-requests/${encodeURIComponent(g.id)}/approve`)),
    ]),
  );
  const recoveries = pending.admin_recoveries.map((r) =>
    row({ "data-test": "recovery-row", "data-recovery-id": r.id, "data-state": r.state }, [
      r.tenant,
      r.requested_by,
      r.reason,
      r.ticket,
      r.state === "waiting" ? ["the tenant may cancel until ", when(r.ready_at)] : "ready",
      r.state === "ready" ? action("Approve", "approve-recovery", () => post(`/v1/admin-recoveries/${encodeURIComponent(r.id)}/approve`)) : "",
    ]),
  );
  return [
    el("h3", {}, "Emergency access waiting for a second operator"),
    table(["Tenant", "Engineer", "Reason", "Ticket", "Approvals", ""], emergencies, "No emergency request is waiting."),
    el("h3", {}, "Admin recoveries waiting for a second operator"),
    table(["Tenant", "Asked by", "Reason", "Ticket", "When", ""], recoveries, "No admin recovery is waiting."),
    el("h3", {}, "Identities waiting for a second operator"),
    table(["Identity", "Role", "Made by", "Since"], waiting, "No identity is waiting."),
    el("p", { class: "quiet" }, "A new operator's token works once an operator other than its maker approves it below."),
    el("h3", {}, "Staff tokens"),
    tokenTable(tokens, true),
    el("h3", {}, "Identities"),
    table(["Name", "Role", "Made by", "Approved by", "State"], identities.map((i) => [i.name, i.role, i.created_by, i.approved_by ?? "—", i.state]), "None."),
  ];
}

function tokenTable(tokens, forOperators) {
  const path = (t, ...rest) => ["/v1/tokens", encodeURIComponent(t.id), ...rest].join("/");
  const live = (t) => t.state === "active" || t.state === "pending-approval";
  const rows = tokens.map((t) =>
    row({ "data-test": "token-row", "data-token-id": t.id, "data-state": t.state }, [
      t.name,
      forOperators ? t.role : (t.tenants ?? []).map((id) => (id === tenant() ? "this tenant" : id)).join(", "),
      t.identity ?? "—",
      [when(t.created), t.created_by ? ` by ${t.created_by}` : ""],
      t.last_used ? when(t.last_used) : "never",
      t.expires_at ? when(t.expires_at) : "never",
      t.revoked ? ["revoked ", when(t.revoked.at), ` by ${t.revoked.by}`] : t.state,
      [
        forOperators && t.state === "pending-approval" ? action("Approve", "approve-operator", () => post(path(t, "approve"))) : "",
        live(t) ? action("Revoke", "revoke-token", () => remove(path(t))) : "",
      ],
    ]),
  );
  const headings = ["Name", forOperators ? "Role" : "Admin of", "Identity", "Created", "Last used", "Expires", "State", ""];
  return table(headings, rows, "No tokens.");
}

// ---- words ----

function actorWords(actor) {
  if (!actor) return "—";
  if (actor.identity) return `${actor.identity} (${actor.role})`;
  return `${actor.role}${actor.token ? ` token ${actor.token.slice(0, 8)}…` : ""}`;
}

function detailsWords(details) {
  const words = (value) => (typeof value === "object" && value !== null ? JSON.stringify(value) : value);
  return Object.entries(details ?? {}).map(([key, value]) => `${key}: ${words(value)}`).join(", ");
}

function regionStates(regions) {
  return Object.entries(regions ?? {}).map(([region, r]) => el("span", { class: `chip ${r.state}`, title: r.error ?? "" }, `${region}: ${r.state}`));
}

function durationWords(seconds) {
  let left = Math.max(0, Math.floor(seconds));
  if (left === 0) return "0 s";
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
    if (left >= size || parts.length) parts.push(`${Math.floor(left / size)} ${unit}`);
    left %= size;
  }
  return parts.join(" ");
}

function bytesWords(size) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = size;
  let unit = 0;
  for (; value >= 1024 && unit < units.length - 1; unit += 1) value /= 1024;
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

const newestFirst = (a, b) => b.created_at.localeCompare(a.created_at);

// ---- DOM ----

/// An element with attributes (`on…` keys become listeners) and children
/// (strings become text, never HTML; arrays are flattened; null and "" dropped).
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, "");
    else if (value !== false && value != null && value !== "") node.setAttribute(name, value);
  }
  node.append(...children.flat(Infinity).filter((c) => c != null && c !== "").map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

function row(attributes, values) {
  return el("tr", attributes, values.map((value) => el("td", {}, value)));
}

/// A table of `rows` (arrays of cell contents, or `row` elements), or the
/// sentence `empty` when there are none.
function table(headings, rows, empty) {
  if (!rows.length) return el("p", { class: "quiet" }, empty);
  const head = el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h))));
  const body = el("tbody", {}, rows.map((r) => (r instanceof Node ? r : row({}, r))));
  return el("div", { class: "scroll" }, el("table", {}, head, body));
}

/// A list of [term, ...description] pairs.
function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.map(([term, ...value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

function field(label, input) {
  return el("label", { class: "field" }, el("span", {}, label), input);
}

function when(text) {
  return text ? el("time", { datetime: text, title: text }, new Date(text).toLocaleString()) : "—";
}

function countdown(until) {
  return el("span", { class: "countdown", "data-until": until }, timeLeft(until));
}

function timeLeft(until) {
  return durationWords((Date.parse(until) - Date.now()) / 1000);
}

function tickCountdowns() {
  for (const node of document.querySelectorAll("[data-until]")) node.textContent = timeLeft(node.dataset.until);
}

function say(...content) {
  byId("message").replaceChildren(el("p", { class: "notice" }, content));
}

function complain(error) {
  byId("message").replaceChildren(el("p", { class: "error", "data-test": "error" }, error.message ?? String(error)));
}

function quiet() {
  byId("message").replaceChildren();
}
