// api.js against a stand-in fetch: the cookie is asked for on every call,
// the CSRF token rides on every change and never on a read, no
// Authorization header is ever sent, and the host's error message reaches
// the caller as it is.

import { test } from "node:test";
import assert from "node:assert/strict";

import { get, post, remove, signIn, signOut, tenantPath, whenSessionEnds } from "../api.js";

const sent = [];
/// Answers in order; each is [status, body].
let answers = [];

globalThis.fetch = async (path, options) => {
  sent.push({ path, ...options });
  const [status, body] = answers.shift();
  return new Response(body === null ? null : JSON.stringify(body), { status });
};

test("sign in, read, change, sign out", async () => {
  answers = [
    [201, { role: "tenant-admin", tenant: "t1", csrf: "c-123", expires_at: "2030-01-01T00:00:00Z" }],
    [200, { id: "t1" }],
    [202, { id: "b1", state: "pending" }],
    [204, null],
  ];
  const session = await signIn("coffer_secret");
  assert.equal(session.tenant, "t1");
  assert.deepEqual(await get(tenantPath("t1")), { id: "t1" });
  assert.equal((await post(tenantPath("t1", "backups"))).id, "b1");
  await signOut();

  const [signInCall, read, change, end] = sent;
  assert.equal(signInCall.method, "POST");
  assert.equal(signInCall.path, "/v1/sessions");
  assert.deepEqual(JSON.parse(signInCall.body), { token: "coffer_secret" });
  assert.equal(read.path, "/v1/tenants/t1");
  assert.equal(read.headers["X-Coffer-CSRF"], undefined);
  assert.equal(change.headers["X-Coffer-CSRF"], "c-123");
  assert.equal(end.method, "DELETE");
  assert.equal(end.path, "/v1/sessions/current");
  assert.equal(end.headers["X-Coffer-CSRF"], "c-123");
  for (const call of sent) {
    assert.equal(call.credentials, "same-origin");
    assert.ok(!Object.keys(call.headers).some((h) => h.toLowerCase() === "authorization"));
  }
  // Only the sign-in request carried the token.
  assert.equal(sent.filter((call) => String(call.body).includes("coffer_secret")).length, 1);
});

test("the host's error message is what the caller sees; 401 ends the session", async () => {
  let ended = null;
  whenSessionEnds((message) => {
    ended = message;
  });
  answers = [
    [409, { error: "the tenant's last admin token cannot be revoked" }],
    [401, { error: "the session has expired; sign in again" }],
  ];
  await assert.rejects(remove("/v1/tokens/x"), { status: 409, message: "the tenant's last admin token cannot be revoked" });
  assert.equal(ended, null);
  await assert.rejects(get("/v1/tokens"), { status: 401 });
  assert.equal(ended, "the session has expired; sign in again");
});

test("ids are escaped in paths", () => {
  assert.equal(tenantPath("a/b", "backups", "c?d", "restore"), "/v1/tenants/a%2Fb/backups/c%3Fd/restore");
});
