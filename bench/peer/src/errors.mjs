// PROTOCOL.md's error codes and their REST statuses.

export const STATUS = {
  invalid: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  too_large: 413,
  rate_limited: 429,
  unavailable: 503,
  draining: 503,
};

export class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
  get status() {
    return STATUS[this.code] ?? 500;
  }
  body() {
    return { error: { code: this.code, message: this.message } };
  }
}

export const invalid = (m) => new ApiError('invalid', m);
export const unauthorized = (m) => new ApiError('unauthorized', m);
export const forbidden = (m) => new ApiError('forbidden', m);
export const notFound = (m) => new ApiError('not_found', m);
export const conflict = (m) => new ApiError('conflict', m);
export const tooLarge = (m) => new ApiError('too_large', m);

/** Any thrown value as a protocol error: unexpected ones (database down...) are `unavailable`. */
export function asApiError(e) {
  if (e instanceof ApiError) return e;
  console.error('peer: unexpected error:', e?.stack ?? e);
  return new ApiError('unavailable', 'the service is unavailable; retry later');
}
