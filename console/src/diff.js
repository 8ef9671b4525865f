// A line diff (longest common subsequence over the lines that differ) in unified form with
// a few lines of context, for the workspace editor's preview.

const CONTEXT = 3;

/** [{op: ' ' | '-' | '+', text}] for every line of a and b. */
function lineOps(a, b) {
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--;
    endB--;
  }
  const ops = a.slice(0, start).map((text) => ({ op: ' ', text }));
  const x = a.slice(start, endA);
  const y = b.slice(start, endB);
  const n = x.length;
  const m = y.length;
  if (n * m > 4_000_000) {
    x.forEach((text) => ops.push({ op: '-', text }));
    y.forEach((text) => ops.push({ op: '+', text }));
  } else {
    // lcs[i][j] = LCS length of x[i..] and y[j..], in one flat array.
    const w = m + 1;
    const lcs = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        lcs[i * w + j] =
          x[i] === y[j] ? lcs[(i + 1) * w + j + 1] + 1 : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
      }
    }
    let i = 0;
    let j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && x[i] === y[j]) {
        ops.push({ op: ' ', text: x[i] });
        i++;
        j++;
      } else if (j < m && (i >= n || lcs[i * w + j + 1] > lcs[(i + 1) * w + j])) {
        ops.push({ op: '+', text: y[j++] });
      } else {
        ops.push({ op: '-', text: x[i++] });
      }
    }
  }
  a.slice(endA).forEach((text) => ops.push({ op: ' ', text }));
  return ops;
}

/**
 * Unified diff of two texts: [{op, text}] where op '@' is a hunk header, or [] when equal.
 */
export function unifiedDiff(before, after) {
  const ops = lineOps(before.split('\n'), after.split('\n'));
  if (!ops.some((o) => o.op !== ' ')) return [];
  const keep = new Array(ops.length).fill(false);
  ops.forEach((o, k) => {
    if (o.op === ' ') return;
    for (let c = Math.max(0, k - CONTEXT); c <= Math.min(ops.length - 1, k + CONTEXT); c++) keep[c] = true;
  });
  const out = [];
  let lineA = 1;
  let lineB = 1;
  let open = false;
  ops.forEach((o, k) => {
    if (keep[k]) {
      if (!open) out.push({ op: '@', text: `@@ line ${lineA} → ${lineB} @@` });
      open = true;
      out.push(o);
    } else open = false;
    if (o.op !== '+') lineA++;
    if (o.op !== '-') lineB++;
  });
  return out;
}
