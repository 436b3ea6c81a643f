import { Command } from "@commander-js/extra-typings";
import { fleetJsonSchema } from "../spec/schema.js";
import { contextOf } from "./context.js";

export function schemaCommand() {
  return new Command("schema")
    .description(
      "print the fleet file's JSON Schema, for editors (schema/shoal.schema.json holds a copy)",
    )
    .action((_options, command) => {
      contextOf(command).printJson(fleetJsonSchema());
    });
}
