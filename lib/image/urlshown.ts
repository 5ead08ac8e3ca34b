/**
 * How zb shows a URL (messages, the journal, JSON output): the request
 * itself uses the whole URL, what is shown leaves out what may be a secret.
 */

/**
 * A URL as zb shows it: without `user:password@` and without the query,
 * where pre-signed URLs carry their tokens.
 * @example displayUrl("https://u:p@h/x.zbi?X-Amz-Signature=s") // "https://h/x.zbi?…"
 */
export function displayUrl(url: string): string {
  const u = URL.parse(url);
  // No host: a URL that does not parse, or parses without an authority ("u:p@10.0.0.1:3128", a
  // proxy variable without its scheme, is the scheme "u" and the path "p@10.0.0.1:3128").
  if (u === null || u.host === "") return scrubbed(url);
  const query = u.search !== "" ? "?…" : "";
  u.username = "";
  u.password = "";
  u.search = "";
  u.hash = "";
  return u.toString() + query;
}

/**
 * A URL that has no parsed authority, shown without what could be
 * credentials: everything after `scheme://` up to its last `@` goes (a
 * password may hold `/`, `?`, `#` and `@`, so no earlier delimiter can be
 * trusted to end it), then the query or fragment.
 */
function scrubbed(url: string): string {
  const head = /^(?:[A-Za-z][A-Za-z0-9+.-]*:)?\/\//.exec(url)?.[0] ?? "";
  const rest = url.slice(head.length);
  return head + rest.slice(rest.lastIndexOf("@") + 1).replace(/[?#].*$/s, "");
}

/**
 * `text` with every URL in it shown as {@link displayUrl} shows it: for
 * messages zb does not write itself (the runtime's), which may name the URL
 * it fetched, query and all.
 */
export function withoutSecrets(text: string): string {
  return text.replace(/\b[A-Za-z][A-Za-z0-9+.-]*:\/\/[^\s"'<>`]*/g, (u) => displayUrl(u));
}
