// Passwords: scrypt (node:crypto, no native dependency). Tokens: HS256 JWTs signed with
// a secret shared through the database, so any instance accepts any instance's token.

import crypto from 'node:crypto';
import { promisify } from 'node:util';

const scrypt = promisify(crypto.scrypt);
const SCRYPT = { N: 16384, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };
const KEYLEN = 32;
const TOKEN_TTL_S = 30 * 24 * 3600;

export async function hashPassword(password) {
  const salt = crypto.randomBytes(16);
  const key = await scrypt(password, salt, KEYLEN, SCRYPT);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

export async function verifyPassword(password, stored) {
  const [kind, N, r, p, salt, key] = stored.split('$');
  if (kind !== 'scrypt') return false;
  const expected = Buffer.from(key, 'base64');
  const got = await scrypt(password, Buffer.from(salt, 'base64'), expected.length, {
    N: Number(N), r: Number(r), p: Number(p), maxmem: SCRYPT.maxmem,
  });
  return crypto.timingSafeEqual(got, expected);
}

/** A hash to verify against when the user does not exist, so both cases cost the same. */
export const decoyHash = await hashPassword('decoy password, never matches');

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
const HEADER = b64({ alg: 'HS256', typ: 'JWT' });

export class Tokens {
  constructor(secret) {
    this.secret = secret;
  }
  #sign(data) {
    return crypto.createHmac('sha256', this.secret).update(data).digest('base64url');
  }
  issue(userId) {
    const now = Math.floor(Date.now() / 1000);
    const data = `${HEADER}.${b64({ sub: String(userId), iat: now, exp: now + TOKEN_TTL_S })}`;
    return `${data}.${this.#sign(data)}`;
  }
  /** The user id a token was issued to, or null if it is forged, malformed or expired. */
  verify(token) {
    if (typeof token !== 'string') return null;
    const parts = token.split('.');
    if (parts.length !== 3 || parts[0] !== HEADER) return null;
    const sig = Buffer.from(parts[2]);
    const want = Buffer.from(this.#sign(`${parts[0]}.${parts[1]}`));
    if (sig.length !== want.length || !crypto.timingSafeEqual(sig, want)) return null;
    let claims;
    try {
      claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
    } catch {
      return null;
    }
    if (typeof claims.exp !== 'number' || claims.exp < Date.now() / 1000) return null;
    const id = Number(claims.sub);
    return Number.isSafeInteger(id) && id > 0 ? id : null;
  }
}
