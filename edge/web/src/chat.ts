// The conversation: messages as articles in an aria-live log, the answer growing as each text delta
// arrives, tool calls and handoffs as indicators inside the answer, what the tools found as chips under
// it (toolchips.ts), and the composer (Enter sends,
// Shift+Enter adds a line). The composer takes text from the moment it shows: a message sent before the
// agents are known is shown at once and goes out as soon as they are (`waitFor`), so nothing typed is lost.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  ChatRequestSchema,
  MessageStatus,
  Role,
  type ChatResponse,
  type Conversation,
  type Message,
  type ToolCallRecord,
} from "../../../gen/ts/athena/chat/v1/chat_pb";
import type { AgentPicker } from "./agents";
import type { Api } from "./api";
import { CUT_OFF, describeError, isCutOff, SignedOutError } from "./errors";
import { el } from "./dom";
import { maxLength } from "./rules";
import { toolChips } from "./toolchips";
import { TurnTrace } from "./tracing";

const EMPTY_HINT = "Pick an agent and say hello. Try “remember my goal is 2000 kcal a day”.";

export interface ChatEvents {
  /** The turn was stored in this conversation (new or continued). */
  conversationStarted(conversationId: string, offlineModel: boolean): void;
  /** The turn ended, successfully or not: the conversation list may have changed. */
  /** The turn ended, however it did; `trace` names its trace, for the calls that follow from it. */
  turnFinished(trace: TurnTrace): void;
  error(error: unknown): void;
}

/** One assistant message being rendered: its parts are appended in the order they happen. */
class AnswerView {
  readonly element: HTMLElement;
  private readonly author: HTMLElement;
  private readonly parts: HTMLElement;
  private text: HTMLElement | null = null;
  private readonly tools = new Map<string, HTMLElement>();
  /** What the tools found (toolchips.ts), under the answer; made with the first result. */
  private results: HTMLElement | null = null;

  constructor(
    private readonly picker: AgentPicker,
    agentId: string,
  ) {
    this.author = el("h3", { class: "author" });
    this.parts = el("div", { class: "answer" });
    this.element = el("article", { class: "message assistant" }, this.author, this.parts);
    this.setAgent(agentId);
  }

  setAgent(agentId: string): void {
    this.author.textContent = this.picker.name(agentId);
    this.element.dataset.agent = agentId;
    this.element.style.setProperty("--message-accent", this.picker.accent(agentId));
  }

  appendText(text: string): void {
    if (this.text === null) {
      this.text = el("p", { class: "content" });
      this.parts.append(this.text);
    }
    this.text.append(text);
  }

  toolCall(callId: string, name: string): void {
    const indicator = el(
      "p",
      { class: "tool-call running", "data-tool": name },
      el("span", { class: "tool-icon", "aria-hidden": "true" }, "⚙"),
      ` Using ${name}…`,
    );
    this.tools.set(callId, indicator);
    this.parts.append(indicator);
    this.text = null;
  }

  toolResult(callId: string, name: string, isError: boolean, resultJson: string): void {
    const indicator = this.tools.get(callId);
    if (!indicator) {
      return; // a handoff's call: the handoff shows instead
    }
    indicator.classList.remove("running");
    indicator.classList.toggle("failed", isError);
    indicator.lastChild?.replaceWith(isError ? ` ${name} failed` : ` Used ${name}`);
    if (this.results === null) {
      const label = "What the tools found";
      this.results = el("div", { class: "tool-results", role: "group", "aria-label": label });
      this.parts.after(this.results);
    }
    this.results.append(...toolChips(name, resultJson, isError));
  }

  handoff(fromAgentId: string, toAgentId: string, reason: string): void {
    const text = `${this.picker.name(fromAgentId)} handed off to ${this.picker.name(toAgentId)}`;
    this.parts.append(
      el(
        "p",
        { class: "handoff", "data-to": toAgentId },
        el("span", { "aria-hidden": "true" }, "→ "),
        reason ? `${text}: ${reason}` : text,
      ),
    );
    this.setAgent(toAgentId);
    this.text = null;
  }

  recalled(count: number): void {
    if (count > 0) {
      const noun = count === 1 ? "memory" : "memories";
      this.parts.append(el("p", { class: "recalled" }, `Recalled ${count} ${noun}`));
    }
  }

  complete(content: string, model: string): void {
    if (this.parts.querySelector(".content") === null && content) {
      this.appendText(content);
    }
    this.element.classList.add("complete");
    this.element.setAttribute("aria-busy", "false");
    if (model) {
      this.element.append(el("p", { class: "meta" }, model));
    }
  }

  fail(message: string): void {
    this.element.classList.add("failed");
    this.element.setAttribute("aria-busy", "false");
    this.element.append(el("p", { class: "message-error" }, `The answer stopped: ${message}`));
  }

  /** Renders a stored message's tool calls (their interleaving with text is not stored). */
  storedToolCalls(records: readonly ToolCallRecord[]): void {
    for (const record of records) {
      if (record.handoff) {
        const target = record.handoff.toAgentId;
        const text = `→ Handed off to ${this.picker.name(target)}`;
        this.parts.append(el("p", { class: "handoff", "data-to": target }, text));
      } else {
        this.toolCall(record.callId, record.name);
        this.toolResult(record.callId, record.name, record.isError, record.resultJson);
      }
    }
  }
}

export class ChatView {
  private conversationId = "";
  private busy = false;
  /** Settles when messages can go out: null, or why they cannot (see `waitFor`). */
  private ready: Promise<unknown> = Promise.resolve(null);

  constructor(
    private readonly api: Api,
    private readonly picker: AgentPicker,
    private readonly log: HTMLElement,
    private readonly title: HTMLElement,
    private readonly form: HTMLFormElement,
    private readonly input: HTMLTextAreaElement,
    private readonly events: ChatEvents,
  ) {
    // The contract's limit (ChatRequest.text's max_len), not a copy of it.
    const limit = maxLength(ChatRequestSchema.field.text);
    if (limit !== undefined) {
      input.maxLength = limit;
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.send();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
  }

  get currentConversation(): string {
    return this.conversationId;
  }

  /** Messages sent before `loading` settles (the agents are listed, the conversation in the address is
   * open) wait for it; if it fails, their text goes back to the message box. */
  waitFor(loading: Promise<unknown>): void {
    this.ready = loading.then(
      () => null,
      (error: unknown) => error ?? new Error("loading failed"),
    );
  }

  /** An empty chat: the next message starts a new conversation. */
  startNew(): void {
    this.conversationId = "";
    this.title.textContent = "New conversation";
    this.log.replaceChildren(
      el("p", { class: "empty muted" }, EMPTY_HINT),
    );
  }

  show(conversation: Conversation): void {
    this.conversationId = conversation.id;
    this.title.textContent = conversation.title || "Conversation";
    this.log.replaceChildren(...conversation.messages.map((message) => this.renderStored(message)));
    const lastAgent = [...conversation.messages].reverse().find((m) => m.role === Role.ASSISTANT)?.agentId;
    this.picker.select(lastAgent || conversation.agentId);
    this.log.scrollTop = this.log.scrollHeight;
  }

  private renderStored(message: Message): HTMLElement {
    const time = message.createdAt ? timestampDate(message.createdAt) : null;
    if (message.role === Role.USER) {
      return userArticle(message.content, time);
    }
    const answer = new AnswerView(this.picker, message.agentId);
    answer.storedToolCalls(message.toolCalls);
    if (message.content) {
      answer.appendText(message.content);
    }
    if (message.status === MessageStatus.FAILED) {
      answer.fail(message.error || "the turn failed");
    } else {
      answer.complete(message.content, "");
    }
    return answer.element;
  }

  async send(): Promise<void> {
    const text = this.input.value.trim();
    if (!text || this.busy) {
      return;
    }
    this.setBusy(true);
    const message = userArticle(text, new Date());
    this.input.value = "";
    this.showSent(message);
    message.classList.add("pending");
    const failure = await this.ready;
    message.classList.remove("pending");
    const agent = this.picker.selected;
    if (failure !== null || agent === undefined) {
      // Never sent (the agents could not be loaded): the text goes back to the box.
      message.remove();
      if (!(failure instanceof SignedOutError)) {
        this.giveBack(text);
      }
      this.setBusy(false);
      return;
    }
    if (!message.isConnected) {
      this.showSent(message); // the conversation opened meanwhile replaced the log
    }
    const answer = new AnswerView(this.picker, agent.id);
    answer.element.setAttribute("aria-busy", "true");
    this.log.append(answer.element);
    this.scroll();
    let started = false;
    let completed = false;
    const trace = new TurnTrace();
    try {
      const stream = this.api.chat.chat(
        {
          agentId: agent.id,
          conversationId: this.conversationId,
          text,
          clientRequestId: crypto.randomUUID(),
        },
        { headers: trace.headers() },
      );
      for await (const response of stream) {
        started = true;
        completed ||= this.apply(answer, response);
        this.scroll();
      }
      if (!completed) {
        answer.fail(CUT_OFF);
        this.giveBack(text);
      }
    } catch (error) {
      if (started && isCutOff(error)) {
        // The message was stored before the first event; the answer may not have been.
        answer.fail(CUT_OFF);
        this.giveBack(text);
        return;
      }
      if (!(error instanceof SignedOutError)) {
        answer.fail(describeError(error));
        if (!this.conversationId) {
          // Nothing was stored: give the text back so it can be sent again.
          this.giveBack(text);
        }
      }
      this.events.error(error);
    } finally {
      this.setBusy(false);
      this.events.turnFinished(trace);
    }
  }

  /** Applies one event to the answer; true for the completion. */
  private apply(answer: AnswerView, response: ChatResponse): boolean {
    const event = response.event;
    switch (event.case) {
      case "conversationStarted":
        this.title.textContent = event.value.title || this.title.textContent;
        this.conversationId = event.value.conversationId;
        answer.setAgent(event.value.agentId || answer.element.dataset.agent || "");
        this.events.conversationStarted(event.value.conversationId, event.value.offlineModel);
        return false;
      case "memoriesRecalled":
        answer.recalled(event.value.memories.length);
        return false;
      case "textDelta":
        answer.appendText(event.value.text);
        return false;
      case "toolCall":
        if (!event.value.handoff) {
          answer.toolCall(event.value.callId, event.value.name);
        }
        return false;
      case "toolResult":
        answer.toolResult(event.value.callId, event.value.name, event.value.isError, event.value.resultJson);
        return false;
      case "handoff":
        answer.handoff(event.value.fromAgentId, event.value.toAgentId, event.value.reason);
        this.picker.select(event.value.toAgentId);
        return false;
      case "messageCompleted":
        answer.setAgent(event.value.agentId || answer.element.dataset.agent || "");
        answer.complete(event.value.content, event.value.model);
        return true;
      default:
        return false;
    }
  }

  private showSent(message: HTMLElement): void {
    this.log.querySelector(".empty")?.remove();
    this.log.append(message);
    this.scroll();
  }

  /** Puts `text` back in the message box, before anything typed since. */
  private giveBack(text: string): void {
    this.input.value = this.input.value ? `${text}\n${this.input.value}` : text;
  }

  private setBusy(busy: boolean): void {
    this.busy = busy;
    this.form.setAttribute("aria-busy", String(busy));
    const button = this.form.querySelector<HTMLButtonElement>("button[type=submit]");
    if (button) {
      button.disabled = busy;
    }
  }

  private scroll(): void {
    this.log.scrollTop = this.log.scrollHeight;
  }
}

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

function userArticle(text: string, time: Date | null): HTMLElement {
  return el(
    "article",
    { class: "message user" },
    el("h3", { class: "author" }, "You"),
    el("p", { class: "content" }, text),
    time ? el("time", { datetime: time.toISOString(), class: "meta" }, clock.format(time)) : null,
  );
}
