// The conversation list (newest first) and the address of the open conversation: `#c=<id>`, so a reload
// or a shared tab reopens it.
import type { Conversation } from "../../../gen/ts/athena/chat/v1/chat_pb";
import type { Api } from "./api";
import { el, show } from "./dom";
import type { TurnTrace } from "./tracing";

/** The conversation id in the page address, or "". */
export function conversationInAddress(): string {
  const match = /^#c=([\w-]{1,64})$/.exec(location.hash);
  return match?.[1] ?? "";
}

/** Records `conversationId` ("" for a new one) in the address without adding a history entry. */
export function setConversationInAddress(conversationId: string): void {
  const url = new URL(location.href);
  url.hash = conversationId ? `c=${conversationId}` : "";
  history.replaceState(null, "", url.hash ? url : url.pathname + url.search);
}

export class HistoryView {
  private current = "";
  onSelect: (conversationId: string) => void = () => {};

  constructor(
    private readonly api: Api,
    private readonly list: HTMLUListElement,
    private readonly empty: HTMLElement,
  ) {}

  /** Lists the conversations again; after a chat turn, within that turn's `trace`. */
  async refresh(trace?: TurnTrace): Promise<void> {
    const response = await this.api.chat.listConversations({ pageSize: 50 }, { headers: trace?.headers() });
    this.render(response.conversations);
  }

  markCurrent(conversationId: string): void {
    this.current = conversationId;
    for (const button of this.list.querySelectorAll<HTMLButtonElement>("button[data-id]")) {
      if (button.dataset.id === conversationId) {
        button.setAttribute("aria-current", "page");
      } else {
        button.removeAttribute("aria-current");
      }
    }
  }

  clear(): void {
    this.current = "";
    this.list.replaceChildren();
  }

  private render(conversations: readonly Conversation[]): void {
    this.list.replaceChildren(
      ...conversations.map((conversation) => {
        const button = el(
          "button",
          { type: "button", class: "conversation", "data-id": conversation.id },
          conversation.title || "Untitled conversation",
        );
        button.addEventListener("click", () => this.onSelect(conversation.id));
        return el("li", {}, button);
      }),
    );
    show(this.empty, conversations.length === 0);
    this.markCurrent(this.current);
  }
}
