// The app's pages in the address bar. The edge serves the app at each of them (edge/envoy_config.py,
// APP_PAGES): `/` is the chat; `/connections` opens the Connections panel over it, and is where the
// providers send a person back after connecting an account. The conversation stays in the fragment
// (history.ts), whichever page shows.

export const CONNECTIONS_PATH = "/connections";

/** The redirect URI given to BeginConnection and CompleteConnection: registered with each provider. */
export function connectionsRedirectUri(): string {
  return `${location.origin}${CONNECTIONS_PATH}`;
}

export function onConnectionsPage(): boolean {
  return location.pathname === CONNECTIONS_PATH;
}

/** Shows `path` in the address, without its query, keeping the fragment; no history entry is added. */
export function setPage(path: "/" | typeof CONNECTIONS_PATH): void {
  history.replaceState(null, "", path + location.hash);
}
