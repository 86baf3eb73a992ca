// Small DOM helpers: typed lookups of the elements index.html declares, and an element builder that only
// ever sets text (never HTML), so nothing a model or a user writes can inject markup.

type Child = Node | string | null | undefined | false;
type Attributes = Record<string, string | boolean | undefined>;

/** The element with `id`, which index.html must declare with the given type. */
export function byId<T extends HTMLElement>(id: string, type: new () => T): T {
  const element = document.getElementById(id);
  if (!(element instanceof type)) {
    throw new Error(`index.html has no <${type.name}> #${id}`);
  }
  return element;
}

/** A new element; `true` attributes are set empty, `false`/`undefined` ones are left out. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === true) {
      element.setAttribute(name, "");
    } else if (typeof value === "string") {
      element.setAttribute(name, value);
    }
  }
  for (const child of children) {
    if (child) {
      element.append(child);
    }
  }
  return element;
}

export function show(element: HTMLElement, visible: boolean): void {
  element.hidden = !visible;
}
