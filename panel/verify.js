// Checks a tenant's audit proof bundle in the tenant's own browser, so that
// the page does not ask the tenant to trust the host it is checking.
//
// A port of the host's Rust code: src/audit/merkle.rs (RFC 9162 leaf hash,
// inclusion and consistency proofs), src/audit/note.rs (C2SP signed notes and
// verifier keys) and src/audit/verify.rs (verify_bundle). SHA-256 and Ed25519
// come from WebCrypto, which browsers offer only in a secure context (https,
// or a loopback address). No I/O: the caller fetches the bundle and the key.

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/// Ed25519 in a note's key id and verifier key (note.rs ALG_ED25519).
const ALG_ED25519 = 0x01;

/// A bundle that does not verify; its message is the reason shown to the tenant.
class Refused extends Error {}

function refuse(reason) {
  throw new Refused(reason);
}

/// Checks `bundle` (GET /v1/tenants/{id}/audit-proof) against `publicKey`
/// (GET /v1/audit/public-key, `{origin, key}`). `remembered` is `{size, root}`
/// of the checkpoint verified last time (root in hex), or null; `tenant`, when
/// given, is the tenant the bundle must be for. Never throws: returns
/// `{ok: true, size, root, entries}` or `{ok: false, reason}`.
export async function verifyBundle(bundle, publicKey, remembered = null, tenant = undefined) {
  try {
    return { ok: true, ...(await check(bundle, publicKey, remembered, tenant)) };
  } catch (error) {
    const reason = error instanceof Refused ? error.message : `the bundle could not be checked: ${error?.message ?? error}`;
    return { ok: false, reason };
  }
}

async function check(bundle, publicKey, remembered, tenant) {
  if (!globalThis.crypto?.subtle) {
    refuse("this browser offers no WebCrypto here (the page is not in a secure context)");
  }
  if (!isObject(bundle) || bundle.format !== 1) refuse("this is not a proof bundle of format 1");
  if (typeof bundle.checkpoint !== "string" || !Array.isArray(bundle.entries) || !isSize(bundle.size)) {
    refuse("the bundle is malformed");
  }
  const consistency = bundle.consistency ?? [];
  if (!Array.isArray(consistency)) refuse("the bundle's consistency proofs are malformed");
  if (!isObject(publicKey) || typeof publicKey.key !== "string") refuse("the host's published key is missing");
  if (bundle.verifier_key !== publicKey.key) {
    refuse(`the bundle names the key ${bundle.verifier_key}, but the host publishes ${publicKey.key}`);
  }
  if (tenant !== undefined && bundle.tenant !== tenant) {
    refuse(`the bundle is for tenant ${bundle.tenant}, not for ${tenant}`);
  }

  const verifier = await parseVerifierKey(publicKey.key);
  const checkpoint = parseCheckpoint(await openNote(bundle.checkpoint, verifier));
  if (typeof publicKey.origin === "string" && checkpoint.origin !== publicKey.origin) {
    refuse(`the checkpoint is from ${checkpoint.origin}, the host's log is ${publicKey.origin}`);
  }
  if (checkpoint.size !== bundle.size) {
    refuse(`the bundle says size ${bundle.size}, its checkpoint ${checkpoint.size}`);
  }
  await checkEntries(bundle, checkpoint);
  await checkConsistency(consistency, checkpoint, remembered);
  return { size: checkpoint.size, root: toHex(checkpoint.root), entries: bundle.entries.length };
}

/// Every entry is the tenant's, the tenant's entries chain without a gap
/// (each names the one before it in `tenant_prev`), and each is in the
/// signed tree at its position.
async function checkEntries(bundle, checkpoint) {
  let previous = null;
  const items = bundle.entries.map((item, i) => {
    if (!isObject(item) || !isSize(item.seq) || typeof item.entry !== "string" || !Array.isArray(item.proof)) {
      refuse(`item ${i} of the bundle is malformed`);
    }
    const bytes = fromBase64(item.entry) ?? refuse(`entry ${item.seq} (item ${i}) is not base64`);
    let entry;
    try {
      entry = JSON.parse(strictUtf8.decode(bytes));
    } catch {
      refuse(`entry ${item.seq} is not a valid entry`);
    }
    if (!isObject(entry) || entry.seq !== item.seq || entry.tenant !== bundle.tenant) {
      refuse(`entry ${entry?.seq} is not this tenant's entry ${item.seq}`);
    }
    const tenantPrev = entry.tenant_prev ?? null;
    if (tenantPrev !== previous) {
      refuse(`entry ${item.seq} follows the tenant's entry ${tenantPrev}, the bundle's previous is ${previous}: an entry is missing`);
    }
    previous = item.seq;
    const proof = item.proof.map((h) => fromHexHash(h) ?? refuse(`entry ${item.seq}: malformed proof`));
    return { seq: item.seq, bytes, proof };
  });
  // The entries are independent: check them all at once, then name the
  // first that fails. Neighbouring entries' paths share most of their nodes,
  // so each node is hashed once for the whole bundle.
  const hashNodes = rememberingNodeHash();
  const included = await Promise.all(
    items.map(async (item) =>
      verifyInclusion(await leafHash(item.bytes), item.seq, checkpoint.size, item.proof, checkpoint.root, hashNodes),
    ),
  );
  const first = included.indexOf(false);
  if (first >= 0) {
    refuse(`entry ${items[first].seq} is not in the signed tree of size ${checkpoint.size}`);
  }
}

/// Every consistency proof in the bundle holds, and the checkpoint the
/// tenant verified before is among them (or is this very checkpoint).
async function checkConsistency(consistency, checkpoint, remembered) {
  const proven = new Map();
  for (const c of consistency) {
    if (!isObject(c) || !isSize(c.from) || !Array.isArray(c.proof)) refuse("a consistency proof is malformed");
    const old = fromHexHash(c.root) ?? refuse("malformed consistency root");
    const proof = c.proof.map((h) => fromHexHash(h) ?? refuse("malformed consistency proof"));
    if (!(await verifyConsistency(c.from, checkpoint.size, proof, old, checkpoint.root))) {
      refuse(`the tree of size ${c.from} is not a prefix of the signed tree of size ${checkpoint.size}`);
    }
    proven.set(c.from, toHex(old));
  }
  if (remembered == null) return;
  const root = isObject(remembered) && isSize(remembered.size) ? fromHexHash(remembered.root) : null;
  if (!root) refuse("the remembered checkpoint is malformed");
  if (remembered.size > checkpoint.size) {
    refuse(`you verified a tree of size ${remembered.size} before, the host now shows size ${checkpoint.size}: entries were removed (log rewritten?)`);
  }
  const matched =
    remembered.size === checkpoint.size ? equal(root, checkpoint.root) : proven.get(remembered.size) === toHex(root);
  if (!matched) {
    refuse(`the root you saw at size ${remembered.size} is not proven consistent with this bundle (log rewritten?)`);
  }
}

// ---- C2SP signed notes (note.rs) ----

/// `<name>+<key id hex>+<base64(0x01 ‖ public key)>`, checked and parsed to
/// `{name, id, key}` where `key` is a WebCrypto Ed25519 public key.
export async function parseVerifierKey(text) {
  const trimmed = text.trim();
  // The key data is base64 and may hold '+'; a name may not.
  const first = trimmed.indexOf("+");
  const second = trimmed.indexOf("+", first + 1);
  if (first < 0 || second < 0) refuse("the host's verifier key is malformed");
  const name = trimmed.slice(0, first);
  const id = fromHex(trimmed.slice(first + 1, second));
  const key = fromBase64(trimmed.slice(second + 1));
  if (!id || id.length !== 4 || !key || key.length !== 33 || key[0] !== ALG_ED25519) {
    refuse("the host's verifier key is malformed");
  }
  const publicBytes = key.slice(1);
  if (!equal(await keyId(name, publicBytes), id)) refuse("the host's verifier key does not match its key id");
  let cryptoKey;
  try {
    cryptoKey = await crypto.subtle.importKey("raw", publicBytes, { name: "Ed25519" }, false, ["verify"]);
  } catch (error) {
    refuse(`this browser cannot check Ed25519 signatures (${error?.name ?? error})`);
  }
  return { name, id, key: cryptoKey };
}

/// SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key), first four bytes.
async function keyId(name, publicBytes) {
  const digest = await sha256(concat(utf8.encode(name), Uint8Array.of(0x0a, ALG_ED25519), publicBytes));
  return digest.slice(0, 4);
}

/// Checks a signed note against `verifier` and returns its text (every line
/// ending in a newline), as note.rs `Verifier::open_text`.
export async function openNote(note, verifier) {
  if (typeof note !== "string") refuse("checkpoint: not a signed note");
  const split = note.indexOf("\n\n");
  if (split < 0) refuse("checkpoint: malformed: no blank line before the signatures");
  const body = note.slice(0, split) + "\n";
  if (/[^\P{Cc}\n]/u.test(note)) refuse("checkpoint: malformed: control characters");
  const lines = note.slice(split + 2).split("\n");
  if (lines.at(-1) === "") lines.pop();
  for (const line of lines) {
    if (!line.startsWith("\u2014 ")) refuse("checkpoint: malformed: a signature line does not start with an em dash");
    const rest = line.slice(2);
    const space = rest.lastIndexOf(" ");
    if (space < 0) refuse("checkpoint: malformed: a signature line has no signature");
    const name = rest.slice(0, space);
    const blob = fromBase64(rest.slice(space + 1)) ?? refuse("checkpoint: malformed: signature is not base64");
    if (name !== verifier.name || blob.length !== 68 || !equal(blob.slice(0, 4), verifier.id)) continue;
    const good = await crypto.subtle.verify({ name: "Ed25519" }, verifier.key, blob.slice(4), utf8.encode(body));
    if (!good) refuse(`checkpoint: signature by ${verifier.name} does not verify`);
    return body;
  }
  refuse(`checkpoint: no signature by key ${verifier.name}`);
}

/// A tlog-checkpoint body: origin, tree size, base64 root, one per line.
export function parseCheckpoint(text) {
  const [origin, size, root] = text.split("\n");
  if (!origin) refuse("checkpoint: malformed: no origin line");
  if (!/^[0-9]+$/.test(size ?? "") || !Number.isSafeInteger(Number(size))) {
    refuse("checkpoint: malformed: the second line is not a tree size");
  }
  const rootBytes = fromBase64(root ?? "");
  if (!rootBytes || rootBytes.length !== 32) refuse("checkpoint: malformed: the third line is not a base64 SHA-256 root");
  return { origin, size: Number(size), root: rootBytes };
}

// ---- RFC 9162 Merkle tree (merkle.rs) ----

export async function leafHash(bytes) {
  return sha256(concat(Uint8Array.of(0x00), bytes));
}

async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(0x01), left, right));
}

/// `nodeHash`, remembering each answer by its whole input (a pure function,
/// so a remembered answer is the answer).
function rememberingNodeHash() {
  const known = new Map();
  // windows-1252 as WHATWG defines it maps each byte to its own character:
  // a fast, one-to-one key.
  const asText = new TextDecoder("windows-1252");
  return (left, right) => {
    const key = asText.decode(left) + asText.decode(right);
    let hash = known.get(key);
    if (!hash) {
      hash = nodeHash(left, right);
      known.set(key, hash);
    }
    return hash;
  };
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf` at `index` in a tree of
/// `size` with root `root`? Indexes are BigInts inside: JavaScript's bit
/// operators on numbers stop at 32 bits.
export async function verifyInclusion(leaf, index, size, proof, root, hashNodes = nodeHash) {
  if (!(index < size)) return false;
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = await hashNodes(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await hashNodes(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && equal(r, root);
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree of `m` leaves with root
/// `old` to be a prefix of the tree of `n` leaves with root `now`?
export async function verifyConsistency(m, n, proof, old, now) {
  if (m > n) return false;
  if (m === n) return proof.length === 0 && equal(old, now);
  if (m === 0) return proof.length === 0;
  if (proof.length === 0) return false;
  const big = BigInt(m);
  const path = (big & (big - 1n)) === 0n ? [old, ...proof] : [...proof];
  let fn = big - 1n;
  let sn = BigInt(n) - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return equal(fr, old) && equal(sr, now) && sn === 0n;
}

// ---- bytes ----

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((total, p) => total + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

const HEX = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));

export function toHex(bytes) {
  let text = "";
  for (const b of bytes) text += HEX[b];
  return text;
}

function fromHex(text) {
  if (typeof text !== "string" || text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) return null;
  const nibble = (at) => {
    const c = text.charCodeAt(at);
    return c <= 57 ? c - 48 : (c | 32) - 87;
  };
  const bytes = new Uint8Array(text.length / 2);
  for (let i = 0; i < bytes.length; i += 1) bytes[i] = (nibble(2 * i) << 4) | nibble(2 * i + 1);
  return bytes;
}

function fromHexHash(text) {
  const bytes = fromHex(text);
  return bytes && bytes.length === 32 ? bytes : null;
}

/// Standard base64 with padding, as the host writes it; null for anything else.
function fromBase64(text) {
  if (typeof text !== "string" || !/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) {
    return null;
  }
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isSize(value) {
  return Number.isSafeInteger(value) && value >= 0;
}
