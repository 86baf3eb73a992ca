// Field limits as the contracts declare them (`buf.validate` rules in proto/), read from the generated
// descriptors: the page holds input to the same numbers the services enforce (mesh.validation) without
// restating them. For example `maxLength(ChatRequestSchema.field.text)`.
import { getOption, hasOption, isFieldSet, type DescField } from "@bufbuild/protobuf";
import { field as fieldRules, StringRulesSchema } from "../../../gen/ts/buf/validate/validate_pb";

/** The most characters the contract allows in a string field; undefined when it sets no `max_len`. */
export function maxLength(field: DescField): number | undefined {
  if (!hasOption(field, fieldRules)) {
    return undefined;
  }
  const rules = getOption(field, fieldRules).type;
  if (rules.case !== "string" || !isFieldSet(rules.value, StringRulesSchema.field.maxLen)) {
    return undefined;
  }
  return Number(rules.value.maxLen);
}
