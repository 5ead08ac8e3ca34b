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
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return url.replace(/\/\/[^/?#]*@/, "//").replace(/[?#].*$/s, "");
  }
  const query = u.search !== "" ? "?…" : "";
  u.username = "";
  u.password = "";
  u.search = "";
  u.hash = "";
  return u.toString() + query;
}

/**
 * `text` with every URL in it shown as {@link displayUrl} shows it: for
 * messages zb does not write itself (the runtime's), which may name the URL
 * it fetched, query and all.
 */
export function withoutSecrets(text: string): string {
  return text.replace(/\b[A-Za-z][A-Za-z0-9+.-]*:\/\/[^\s"'<>`]*/g, (u) => displayUrl(u));
}
