// The Connections panel: the person's connected accounts (provider, account, what agents may read, where
// each stands, when it was last used), connecting a provider (OAuth in the provider's own page, which
// sends the browser back to `/connections` with `code` and `state`), reconnecting one the provider no
// longer accepts, disconnecting (after a confirmation), and importing an Apple Health export (uploads.ts).
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  Capability,
  ConnectionStatus,
  Provider,
  type Connection,
} from "../../../gen/ts/athena/connections/v1/connections_pb";
import { CONNECTIONS_PATH, connectionsRedirectUri, onConnectionsPage, setPage } from "./address";
import type { Api } from "./api";
import { byId, el, show } from "./dom";
import { describeError, SignedOutError } from "./errors";
import { UploadsView } from "./uploads";

interface ProviderInfo {
  readonly provider: Provider;
  readonly name: string;
  /** What the provider offers, in Capability order (connections.proto). */
  readonly capabilities: readonly Capability[];
}

const PROVIDERS: readonly ProviderInfo[] = [
  {
    provider: Provider.GOOGLE,
    name: "Google",
    capabilities: [Capability.CALENDAR, Capability.FILES, Capability.HEALTH],
  },
  { provider: Provider.MICROSOFT, name: "Microsoft", capabilities: [Capability.CALENDAR, Capability.FILES] },
];

const CAPABILITIES: Readonly<Record<Capability, string>> = {
  [Capability.UNSPECIFIED]: "Unknown",
  [Capability.CALENDAR]: "Calendar",
  [Capability.FILES]: "Files",
  [Capability.HEALTH]: "Health data",
};

/** What a new connection asks for unless the person changes it. */
const DEFAULT_CAPABILITY = Capability.CALENDAR;

const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function providerName(provider: Provider): string {
  return PROVIDERS.find((info) => info.provider === provider)?.name ?? "That account";
}

function capabilityList(capabilities: readonly Capability[]): string {
  return capabilities.map((capability) => CAPABILITIES[capability]).join(", ");
}

export class ConnectionsPanel {
  private readonly dialog = byId("connections-dialog", HTMLDialogElement);
  private readonly status = byId("connections-status", HTMLParagraphElement);
  private readonly list = byId("connection-list", HTMLUListElement);
  private readonly empty = byId("no-connections", HTMLParagraphElement);
  private readonly connect = byId("connect-options", HTMLDivElement);
  private readonly uploads: UploadsView;
  private connections: readonly Connection[] = [];

  constructor(private readonly api: Api) {
    this.uploads = new UploadsView(api);
    byId("open-connections", HTMLButtonElement).addEventListener("click", () => void this.open());
    byId("close-connections", HTMLButtonElement).addEventListener("click", () => this.dialog.close());
    // Closing (the button, Escape) leaves `/connections` for the chat.
    this.dialog.addEventListener("close", () => {
      if (onConnectionsPage()) {
        setPage("/");
      }
    });
  }

  /** Shows the panel with the person's connections and imports, at `/connections`. */
  async open(message = ""): Promise<void> {
    this.say(message);
    if (!this.dialog.open) {
      this.dialog.showModal();
    }
    if (!onConnectionsPage()) {
      setPage(CONNECTIONS_PATH);
    }
    await Promise.all([this.refresh(message !== ""), this.uploads.refresh()]);
  }

  /** Opens the panel when the address is `/connections`: finishing a connection first when the provider
   * just sent the browser back with its answer (`state` and `code`, or `error`). */
  async openFromAddress(): Promise<void> {
    if (!onConnectionsPage()) {
      return;
    }
    const params = new URLSearchParams(location.search);
    const state = params.get("state") ?? "";
    const code = params.get("code") ?? "";
    const failure = params.get("error") ?? "";
    // Once: a reload must not send the same answer again.
    setPage(CONNECTIONS_PATH);
    if (!state && !failure) {
      await this.open();
      return;
    }
    this.dialog.showModal();
    this.say("Finishing connecting…");
    await this.open(await this.complete(state, code, failure));
  }

  /** Nothing of the person who was signed in stays: the panel closes and empties, an import stops. */
  reset(): void {
    this.dialog.close();
    this.connections = [];
    this.list.replaceChildren();
    this.connect.replaceChildren();
    this.say("");
    this.uploads.reset();
  }

  private async complete(state: string, code: string, failure: string): Promise<string> {
    if (!state) {
      return failure === "access_denied"
        ? "Connecting was cancelled."
        : "Connecting did not complete. Please try again.";
    }
    try {
      const response = await this.api.connections.completeConnection({
        state,
        code,
        error: failure,
        redirectUri: connectionsRedirectUri(),
      });
      const connection = response.connection;
      if (!connection) {
        return "Connecting did not complete. Please try again.";
      }
      const account = connection.account ? ` (${connection.account})` : "";
      const capabilities = capabilityList(connection.capabilities);
      return `${providerName(connection.provider)}${account} is connected: ${capabilities}.`;
    } catch (error) {
      if (error instanceof SignedOutError) {
        throw error;
      }
      return failure === "access_denied" ? "Connecting was cancelled." : describeError(error);
    }
  }

  /** Lists the connections again; `keepStatus` leaves the sentence the status line shows. */
  private async refresh(keepStatus = false): Promise<void> {
    if (!keepStatus) {
      this.say("Loading…");
    }
    try {
      const response = await this.api.connections.listConnections({});
      this.connections = response.connections;
      if (!keepStatus) {
        this.say("");
      }
      this.render();
    } catch (error) {
      if (!(error instanceof SignedOutError)) {
        this.say(describeError(error));
      }
    }
  }

  private render(): void {
    this.list.replaceChildren(...this.connections.map((connection) => this.item(connection)));
    show(this.empty, this.connections.length === 0);
    this.connect.replaceChildren(...PROVIDERS.map((info) => this.connectOption(info)));
  }

  private item(connection: Connection): HTMLElement {
    const name = providerName(connection.provider);
    const standing = statusSentence(connection);
    const used = connection.lastUsedAt
      ? `Last used ${when.format(timestampDate(connection.lastUsedAt))}`
      : "Not used yet";
    const actions = el("div", { class: "connection-actions" });
    const item = el(
      "li",
      {
        class: "connection",
        "data-provider": Provider[connection.provider].toLowerCase(),
        "data-status": ConnectionStatus[connection.status].toLowerCase(),
      },
      el("h4", {}, name, connection.account && el("span", { class: "account" }, ` ${connection.account}`)),
      el("p", { class: "capabilities" }, capabilityList(connection.capabilities)),
      el("p", { class: "connection-status" }, standing),
      el("p", { class: "meta" }, used),
      actions,
    );
    const showActions = (): void => {
      const buttons: HTMLElement[] = [];
      if (connection.status === ConnectionStatus.NEEDS_RECONNECT) {
        const reconnect = el(
          "button",
          { type: "button", class: "primary", "aria-label": `Reconnect ${name}` },
          "Reconnect",
        );
        reconnect.addEventListener(
          "click",
          () => void this.begin(connection.provider, connection.capabilities, reconnect),
        );
        buttons.push(reconnect);
      }
      const disconnect = el(
        "button",
        { type: "button", class: "danger", "aria-label": `Disconnect ${name}` },
        "Disconnect",
      );
      disconnect.addEventListener("click", () => confirmDisconnect());
      buttons.push(disconnect);
      actions.replaceChildren(...buttons);
    };
    // Asked in place: what disconnecting does, then a second, explicit button.
    const confirmDisconnect = (): void => {
      const cancel = el("button", { type: "button" }, "Cancel");
      const confirm = el("button", { type: "button", class: "danger" }, `Disconnect ${name}`);
      cancel.addEventListener("click", () => {
        showActions();
        actions.querySelector("button")?.focus();
      });
      confirm.addEventListener("click", () => void this.disconnect(connection.provider, confirm));
      actions.replaceChildren(
        el(
          "p",
          { class: "confirm", role: "alert" },
          `Disconnect ${name}? Your agents will no longer read it, and what was read from it is deleted.`,
        ),
        cancel,
        confirm,
      );
      confirm.focus();
    };
    showActions();
    return item;
  }

  /** The form to connect `info` (or add capabilities to its connection): one checkbox per capability. */
  private connectOption(info: ProviderInfo): HTMLElement {
    const held = new Set(this.connections.find((c) => c.provider === info.provider)?.capabilities ?? []);
    const connected = held.size > 0;
    const boxes = info.capabilities.map((capability) => {
      const id = `connect-${Provider[info.provider].toLowerCase()}-${Capability[capability].toLowerCase()}`;
      const box = el("input", {
        type: "checkbox",
        id,
        value: String(capability),
        checked: held.has(capability) || (!connected && capability === DEFAULT_CAPABILITY),
        disabled: held.has(capability),
      });
      return { capability, box, label: el("label", { for: id }, box, ` ${CAPABILITIES[capability]}`) };
    });
    const verb = connected ? `Add to ${info.name}` : `Connect ${info.name}`;
    const button = el("button", { type: "submit", class: "primary" }, verb);
    const chosen = () => boxes.filter(({ box }) => box.checked && !box.disabled).map((b) => b.capability);
    const update = () => {
      button.disabled = chosen().length === 0;
    };
    const form = el(
      "form",
      { class: "connect-provider", "data-provider": Provider[info.provider].toLowerCase() },
      el(
        "fieldset",
        {},
        el("legend", {}, info.name),
        el("div", { class: "capability-options" }, ...boxes.map(({ label }) => label)),
        button,
      ),
    );
    form.addEventListener("change", update);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.begin(info.provider, chosen(), button);
    });
    update();
    show(form, boxes.some(({ box }) => !box.disabled));
    return form;
  }

  /** Sends the browser to the provider's consent page; it comes back to `/connections`. */
  private async begin(
    provider: Provider,
    capabilities: readonly Capability[],
    button: HTMLButtonElement,
  ): Promise<void> {
    button.disabled = true;
    this.say(`Opening ${providerName(provider)}…`);
    try {
      const response = await this.api.connections.beginConnection({
        provider,
        capabilities: [...capabilities],
        redirectUri: connectionsRedirectUri(),
      });
      location.assign(response.authorizationUrl);
    } catch (error) {
      button.disabled = false;
      if (!(error instanceof SignedOutError)) {
        this.say(describeError(error));
      }
    }
  }

  private async disconnect(provider: Provider, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    const name = providerName(provider);
    try {
      const response = await this.api.connections.disconnect({ provider });
      const elsewhere = response.revokedAtProvider
        ? ""
        : ` You can also remove AthenaOS in your ${name} account's settings.`;
      await this.refresh(true);
      this.say(`${name} was disconnected.${elsewhere}`);
    } catch (error) {
      button.disabled = false;
      if (!(error instanceof SignedOutError)) {
        this.say(describeError(error));
      }
    }
  }

  private say(message: string): void {
    this.status.textContent = message;
  }
}

function statusSentence(connection: Connection): string {
  switch (connection.status) {
    case ConnectionStatus.CONNECTED:
      return "Connected";
    case ConnectionStatus.NEEDS_RECONNECT:
      return connection.statusMessage || `${providerName(connection.provider)} needs to be connected again.`;
    case ConnectionStatus.ERROR:
      return connection.statusMessage || "The last use failed.";
    default:
      return connection.statusMessage || "Unknown";
  }
}
