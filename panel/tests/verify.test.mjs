// verify.js against real bundles from a coffer host (bundle.json, and
// bundle-later.json fetched with ?seen=<bundle.json's size> after more
// audited actions), the Certificate Transparency and Go signed-note vectors
// the Rust code is tested on, and a 10,000-entry bundle made here by an
// independent tree built with node:crypto. Run: node --test panel/tests/

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import assert from "node:assert/strict";

import { leafHash, openNote, parseVerifierKey, verifyBundle, verifyConsistency, verifyInclusion } from "../verify.js";

const fixture = (name) => JSON.parse(readFileSync(new URL(name, import.meta.url), "utf8"));
const bundle = fixture("bundle.json");
const later = fixture("bundle-later.json");
const publicKey = fixture("public-key.json");
const copy = (value) => structuredClone(value);
const hex = (text) => Uint8Array.from(Buffer.from(text, "hex"));

/// The bundle with `change` applied to the bytes of entry item `i`.
function withEntryBytes(source, i, change) {
  const altered = copy(source);
  const bytes = Buffer.from(altered.entries[i].entry, "base64");
  change(bytes);
  altered.entries[i].entry = bytes.toString("base64");
  return altered;
}

test("a real bundle verifies against the host's published key", async () => {
  const result = await verifyBundle(bundle, publicKey, null);
  assert.deepEqual(result, {
    ok: true,
    size: bundle.size,
    root: Buffer.from(bundle.checkpoint.split("\n")[2], "base64").toString("hex"),
    entries: bundle.entries.length,
  });
  assert.equal((await verifyBundle(later, publicKey, null)).ok, true);
});

test("one byte changed in one entry fails", async () => {
  // A digit of the entry's time: still valid JSON of the same tenant, so the
  // hash, not the parser, has to catch it.
  const altered = withEntryBytes(bundle, 3, (bytes) => {
    const at = bytes.indexOf('"at":') + 5;
    bytes[at] = bytes[at] === 0x39 ? 0x38 : bytes[at] + 1;
  });
  const result = await verifyBundle(altered, publicKey, null);
  assert.equal(result.ok, false);
  assert.match(result.reason, new RegExp(`entry ${bundle.entries[3].seq} is not in the signed tree`));
});

test("an entry that no longer parses, as the test relay alters it, fails", async () => {
  const altered = copy(bundle);
  const first = altered.entries[0].entry;
  altered.entries[0].entry = (first[0] === "A" ? "B" : "A") + first.slice(1);
  const result = await verifyBundle(altered, publicKey, null);
  assert.equal(result.ok, false, result.reason);
});

test("an altered proof hash fails", async () => {
  const altered = copy(bundle);
  const proof = altered.entries[2].proof;
  proof[0] = (proof[0][0] === "0" ? "1" : "0") + proof[0].slice(1);
  const result = await verifyBundle(altered, publicKey, null);
  assert.equal(result.ok, false);
  assert.match(result.reason, /is not in the signed tree/);
});

test("a dropped entry or another tenant's bundle fails", async () => {
  const dropped = copy(bundle);
  dropped.entries.splice(4, 1);
  assert.match((await verifyBundle(dropped, publicKey, null)).reason, /an entry is missing/);
  const result = await verifyBundle(bundle, publicKey, null, "0".repeat(32));
  assert.match(result.reason, /not for 0{32}/);
});

/// A verifier key for a fresh Ed25519 key under `name`, as note.rs writes one.
async function freshKey(name) {
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
  const raw = Buffer.from(await crypto.subtle.exportKey("raw", pair.publicKey));
  const id = createHash("sha256").update(name).update("\n").update(Buffer.from([1])).update(raw).digest().subarray(0, 4);
  return { pair, id, key: `${name}+${id.toString("hex")}+${Buffer.concat([Buffer.from([1]), raw]).toString("base64")}` };
}

test("a wrong key fails, whether the bundle names it or not", async () => {
  const other = await freshKey(publicKey.origin);
  const published = { origin: publicKey.origin, key: other.key };
  const mismatch = await verifyBundle(bundle, published, null);
  assert.equal(mismatch.ok, false);
  assert.match(mismatch.reason, /publishes/);
  // Bundle and published key agree on the other key: the note is not signed by it.
  const both = { ...copy(bundle), verifier_key: other.key };
  const unsigned = await verifyBundle(both, published, null);
  assert.equal(unsigned.ok, false);
  assert.match(unsigned.reason, /no signature by key/);
  // A key whose id does not match its bytes is refused outright.
  const forged = publicKey.key.replace(/\+([0-9a-f]{8})\+/, (_, id) => `+${id === "00000000" ? "11111111" : "00000000"}+`);
  const refused = await verifyBundle({ ...copy(bundle), verifier_key: forged }, { ...publicKey, key: forged }, null);
  assert.match(refused.reason, /key id/);
});

test("a bad signature, or a changed checkpoint, fails", async () => {
  const [body, signatures] = bundle.checkpoint.split("\n\n");
  const line = signatures.trimEnd();
  const space = line.lastIndexOf(" ");
  const blob = Buffer.from(line.slice(space + 1), "base64");
  blob[10] ^= 0x01;
  const badSignature = { ...copy(bundle), checkpoint: `${body}\n\n${line.slice(0, space)} ${blob.toString("base64")}\n` };
  const result = await verifyBundle(badSignature, publicKey, null);
  assert.equal(result.ok, false);
  assert.match(result.reason, /signature by .* does not verify/);
  const lines = bundle.checkpoint.split("\n");
  lines[1] = String(Number(lines[1]) + 1);
  const changed = await verifyBundle({ ...copy(bundle), checkpoint: lines.join("\n"), size: bundle.size + 1 }, publicKey, null);
  assert.match(changed.reason, /does not verify/);
});

test("consistency with the checkpoint verified before", async () => {
  const first = await verifyBundle(bundle, publicKey, null);
  assert.ok(later.size > bundle.size && later.consistency[0].from === bundle.size);
  const seen = { size: first.size, root: first.root };
  const result = await verifyBundle(later, publicKey, seen);
  assert.equal(result.ok, true, result.reason);
  assert.equal(result.size, later.size);
  // The same checkpoint again needs no proof.
  assert.equal((await verifyBundle(bundle, publicKey, seen)).ok, true);
  // A different remembered root: the log was rewritten.
  const wrongRoot = { size: seen.size, root: seen.root.replace(/^./, (c) => (c === "0" ? "1" : "0")) };
  assert.match((await verifyBundle(later, publicKey, wrongRoot)).reason, /not proven consistent/);
  assert.match((await verifyBundle(bundle, publicKey, wrongRoot)).reason, /not proven consistent/);
  // No proof from the remembered size.
  assert.match((await verifyBundle({ ...copy(later), consistency: [] }, publicKey, seen)).reason, /not proven consistent/);
  // The log shrank.
  assert.match((await verifyBundle(bundle, publicKey, { size: later.size, root: result.root })).reason, /entries were removed/);
  // An altered consistency proof.
  const altered = copy(later);
  const proof = altered.consistency[0].proof;
  proof[1] = (proof[1][0] === "0" ? "1" : "0") + proof[1].slice(1);
  assert.match((await verifyBundle(altered, publicKey, seen)).reason, /is not a prefix/);
});

test("a malformed bundle gives ok: false, never an exception", async () => {
  for (const junk of [null, 7, "text", {}, { format: 1 }, { ...copy(bundle), entries: [null] }, { ...copy(bundle), consistency: [{}] }]) {
    const result = await verifyBundle(junk, publicKey, null);
    assert.equal(result.ok, false, JSON.stringify(junk)?.slice(0, 80));
    assert.equal(typeof result.reason, "string");
  }
  assert.equal((await verifyBundle(bundle, null, null)).ok, false);
  assert.equal((await verifyBundle(bundle, publicKey, { size: "x" })).ok, false);
});

// The Certificate Transparency vectors of src/audit/merkle.rs.
const CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
const CT_ROOTS = [
  "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
  "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
  "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
  "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
  "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
  "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
  "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

test("the Certificate Transparency inclusion and consistency vectors", async () => {
  const root = (size) => hex(CT_ROOTS[size - 1]);
  const inclusion = [
    [0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]],
    [5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]],
    [2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]],
  ];
  for (const [m, size, proof] of inclusion) {
    const leaf = await leafHash(hex(CT_LEAVES[m]));
    assert.ok(await verifyInclusion(leaf, m, size, proof.map(hex), root(size)), `leaf ${m} of ${size}`);
    assert.ok(!(await verifyInclusion(leaf, (m + 1) % size, size, proof.map(hex), root(size))));
    assert.ok(!(await verifyInclusion(await leafHash(hex("ff")), m, size, proof.map(hex), root(size))));
  }
  const consistency = [
    [1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]],
    [6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]],
    [2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]],
  ];
  for (const [m, n, proof] of consistency) {
    assert.ok(await verifyConsistency(m, n, proof.map(hex), root(m), root(n)), `${m} to ${n}`);
    assert.ok(!(await verifyConsistency(m, n, proof.map(hex), root(n), root(n))));
  }
  assert.ok(await verifyConsistency(4, 4, [], root(4), root(4)));
  assert.ok(!(await verifyConsistency(5, 4, [], root(4), root(4))));
});

test("the Go reference signed note (golang.org/x/mod/sumdb/note)", async () => {
  const verifier = await parseVerifierKey("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW");
  const text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
  const note = `${text}\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n`;
  assert.equal(await openNote(note, verifier), text);
  await assert.rejects(openNote(note.replace("cryptography", "cryptographY"), verifier), /does not verify/);
  await assert.rejects(openNote(note.replace("cryptography", "crypto\u0007graphy"), verifier), /control characters/);
});

// ---- an independent tree (RFC 9162 §2.1, node:crypto) for a large bundle ----

const sha = (...parts) => createHash("sha256").update(Buffer.concat(parts)).digest();
const split = (n) => 2 ** Math.floor(Math.log2(n - 1));

function treeOf(leaves) {
  const memo = new Map();
  const mth = (start, end) => {
    const key = `${start}:${end}`;
    if (!memo.has(key)) {
      const n = end - start;
      const k = n > 1 ? split(n) : 0;
      memo.set(key, n === 1 ? sha(Buffer.from([0]), leaves[start]) : sha(Buffer.from([1]), mth(start, start + k), mth(start + k, end)));
    }
    return memo.get(key);
  };
  const path = (m, start, end) => {
    const n = end - start;
    if (n <= 1) return [];
    const k = split(n);
    return m < k ? [...path(m, start, start + k), mth(start + k, end)] : [...path(m - k, start + k, end), mth(start, start + k)];
  };
  const subproof = (m, start, end, whole) => {
    const n = end - start;
    if (m === n) return whole ? [] : [mth(start, end)];
    const k = split(n);
    return m <= k
      ? [...subproof(m, start, start + k, whole), mth(start + k, end)]
      : [...subproof(m - k, start + k, end, false), mth(start, start + k)];
  };
  return { root: (size) => mth(0, size), inclusion: (m, size) => path(m, 0, size), consistency: (m, n) => subproof(m, 0, n, true) };
}

test("a bundle of 10,000 entries in a tree of 20,000, signed here", async (t) => {
  const origin = "test.example/panel";
  const tenant = "ab".repeat(16);
  const size = 20_000;
  const leaves = [];
  let previous = null;
  for (let seq = 0; seq < size; seq += 1) {
    const mine = seq % 2 === 1;
    const entry = { seq, at: 1_700_000_000_000 + seq, prev: "", kind: mine ? "record.read" : "other", ...(mine ? { tenant } : { tenant: "cd".repeat(16) }) };
    if (mine && previous !== null) entry.tenant_prev = previous;
    if (mine) previous = seq;
    leaves.push(Buffer.from(JSON.stringify(entry)));
  }
  const tree = treeOf(leaves);
  const key = await freshKey(origin);
  const body = `${origin}\n${size}\n${tree.root(size).toString("base64")}\n`;
  const signature = Buffer.from(await crypto.subtle.sign({ name: "Ed25519" }, key.pair.privateKey, Buffer.from(body)));
  const checkpoint = `${body}\n\u2014 ${origin} ${Buffer.concat([key.id, signature]).toString("base64")}\n`;
  const seenSize = 7_777;
  const large = {
    format: 1,
    tenant,
    origin,
    verifier_key: key.key,
    checkpoint,
    size,
    entries: leaves
      .map((bytes, seq) => ({ seq, entry: bytes.toString("base64"), proof: tree.inclusion(seq, size).map((h) => h.toString("hex")) }))
      .filter((item) => item.seq % 2 === 1),
    consistency: [{ from: seenSize, root: tree.root(seenSize).toString("hex"), proof: tree.consistency(seenSize, size).map((h) => h.toString("hex")) }],
  };
  const started = performance.now();
  const result = await verifyBundle(large, { origin, key: key.key }, { size: seenSize, root: tree.root(seenSize).toString("hex") }, tenant);
  t.diagnostic(`verified ${result.entries} entries at tree size ${result.size} in ${Math.round(performance.now() - started)} ms (Node ${process.version})`);
  assert.equal(result.ok, true, result.reason);
  assert.equal(result.entries, 10_000);
  const tampered = withEntryBytes(large, 9_000, (bytes) => {
    bytes[bytes.indexOf('"at":') + 6] ^= 0x01;
  });
  assert.match((await verifyBundle(tampered, { origin, key: key.key }, null)).reason, new RegExp(`entry ${large.entries[9_000].seq} is not`));
});
