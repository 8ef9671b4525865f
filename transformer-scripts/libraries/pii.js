// Example library for user transformations (import { mask } from "pii").

// Keeps the first and last character of a string and stars the rest.
export function mask(value) {
  const s = String(value ?? "");
  if (s.length <= 2) return "*".repeat(s.length);
  return s[0] + "*".repeat(s.length - 2) + s[s.length - 1];
}

// Masks every listed key of `obj` that holds a value.
export function maskKeys(obj, keys) {
  const out = { ...obj };
  for (const k of keys) if (out[k] !== undefined && out[k] !== null) out[k] = mask(out[k]);
  return out;
}
