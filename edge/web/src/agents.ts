// The agent picker: one radio per agent of the catalog, each in the agent's accent colour. The accent
// token from the catalog ("accent-green") names a CSS custom property of app.css (`--accent-green`); the
// chosen agent's colour is published as `--agent-accent` on the chat, which everything accented uses.
// Until the catalog arrives the picker says so (visible text in a live region, `aria-busy` on the list).
import type { Agent } from "../../../gen/ts/athena/chat/v1/chat_pb";
import { el } from "./dom";

const TOKEN = /^[a-z][a-z0-9-]{0,40}$/;

/** `var(--accent-green, var(--accent-default))` for "accent-green"; unknown or odd tokens → default. */
export function accentColor(token: string): string {
  return TOKEN.test(token) ? `var(--${token}, var(--accent-default))` : "var(--accent-default)";
}

export class AgentPicker {
  private agents = new Map<string, Agent>();
  private selectedId = "";
  onChange: (agent: Agent) => void = () => {};

  constructor(
    private readonly container: HTMLElement,
    private readonly accentScope: HTMLElement,
  ) {}

  get selected(): Agent | undefined {
    return this.agents.get(this.selectedId);
  }

  /** The catalog's agents, in its order (empty until `render`). */
  get all(): readonly Agent[] {
    return [...this.agents.values()];
  }

  name(agentId: string): string {
    return this.agents.get(agentId)?.name ?? agentId;
  }

  accent(agentId: string): string {
    return accentColor(this.agents.get(agentId)?.accentToken ?? "");
  }

  /** Forgets the agents and says they are loading, until `render` or `showUnavailable`. */
  showLoading(): void {
    this.agents = new Map();
    this.showStatus("Loading agents…", true);
  }

  /** The agents could not be listed (the app shows why). */
  showUnavailable(): void {
    this.showStatus("The agents could not be loaded. Reload the page to try again.", false);
  }

  render(agents: readonly Agent[]): void {
    this.agents = new Map(agents.map((agent) => [agent.id, agent]));
    this.container.setAttribute("aria-busy", "false");
    this.container.replaceChildren(
      ...agents.map((agent) => {
        const id = `agent-${agent.id}`;
        const description = `${id}-description`;
        const input = el("input", {
          type: "radio",
          name: "agent",
          id,
          value: agent.id,
          disabled: !agent.enabled,
          "aria-describedby": description,
        });
        input.addEventListener("change", () => {
          if (input.checked) {
            this.select(agent.id);
            this.onChange(agent);
          }
        });
        const option = el(
          "div",
          { class: "agent-option", "data-agent": agent.id },
          input,
          el("label", { for: id }, el("span", { class: "swatch", "aria-hidden": "true" }), agent.name),
          el("small", { id: description }, agent.description, agent.enabled ? "" : " (disabled)"),
        );
        option.style.setProperty("--option-accent", accentColor(agent.accentToken));
        return option;
      }),
    );
    const first = agents.find((agent) => agent.enabled);
    if (!this.agents.get(this.selectedId)?.enabled && first) {
      this.select(first.id);
    } else {
      this.select(this.selectedId);
    }
  }

  private showStatus(text: string, busy: boolean): void {
    this.container.setAttribute("aria-busy", String(busy));
    this.container.replaceChildren(el("p", { class: "agents-status muted", role: "status" }, text));
  }

  /** Selects `agentId` (if known and enabled) without telling `onChange`. */
  select(agentId: string): void {
    const agent = this.agents.get(agentId);
    if (!agent?.enabled) {
      return;
    }
    this.selectedId = agent.id;
    const input = this.container.querySelector<HTMLInputElement>(`input[value="${CSS.escape(agent.id)}"]`);
    if (input) {
      input.checked = true;
    }
    this.accentScope.style.setProperty("--agent-accent", accentColor(agent.accentToken));
    this.accentScope.dataset.agent = agent.id;
  }
}
