//! Schema overrides for fields whose derived schema cannot say enough:
//! CEL rules with messages a user can act on, and the size bounds that let
//! the API server accept those rules within its CEL cost budget.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::{json, Value};

/// The longest argument accepted in the trainer's command. CEL cost is
/// estimated from the worst case, so every string a rule reads is bounded.
const MAX_ARG_LEN: u64 = 4096;
const MAX_COMMAND_ARGS: u64 = 256;
const MAX_CONTAINERS: u64 = 32;

/// Shell binaries that, followed by `-c`, make a shell-form command.
const SHELL_PATTERN: &str = "^(/usr)?(/local)?(/s?bin/)?(sh|bash|dash|ash|zsh|ksh|mksh)$";
/// `-c`, and combined flags that include it (`-ec`, `-lc`, `-xc`).
const DASH_C_PATTERN: &str = "^-[a-zA-Z]*c[a-zA-Z]*$";

/// A PodTemplateSpec whose containers carry the trainer rules.
pub fn pod_template(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<PodTemplateSpec>();
    let is_trainer = "(self.size() == 1 || c.name == 'trainer')";
    let rules = json!([
        {
            "rule": "self.size() == 1 || self.exists_one(c, c.name == 'trainer')",
            "message": "name exactly one container `trainer`, or give a single container: it is the one the operator runs under its launcher"
        },
        {
            "rule": format!("self.all(c, !{is_trainer} || (has(c.command) && size(c.command) > 0))"),
            "message": "the trainer container needs `command` in exec form, e.g. [\"python\", \"train.py\"]: the operator runs it under its launcher and cannot read the image's ENTRYPOINT"
        },
        {
            // Only the places a shell's -c can take effect are read (the
            // flag right after the shell, or after one more flag, or first in
            // args): scanning every argument exceeds the CEL cost budget.
            "rule": format!(
                "self.all(c, !{is_trainer} || !has(c.command) || size(c.command) == 0 || \
                 !c.command[0].matches('{SHELL_PATTERN}') || \
                 !((size(c.command) > 1 && c.command[1].matches('{DASH_C_PATTERN}')) || \
                   (size(c.command) > 2 && c.command[2].matches('{DASH_C_PATTERN}')) || \
                   (size(c.command) == 1 && has(c.args) && size(c.args) > 0 && c.args[0].matches('{DASH_C_PATTERN}'))))"
            ),
            "message": "the trainer's command is shell form (`sh -c \"...\"`): a shell does not forward SIGTERM, so the trainer would be SIGKILLed without saving. Give the program and its arguments directly, e.g. [\"python\", \"train.py\", \"--lr\", \"0.1\"]"
        }
    ]);
    if let Some(containers) = pointer(&mut schema, "/properties/spec/properties/containers") {
        containers.insert("maxItems".into(), json!(MAX_CONTAINERS));
        containers.insert("x-kubernetes-validations".into(), rules);
    }
    for field in ["command", "args"] {
        let path = format!("/properties/spec/properties/containers/items/properties/{field}");
        if let Some(list) = pointer(&mut schema, &path) {
            list.insert("maxItems".into(), json!(MAX_COMMAND_ARGS * 4));
            if field == "command" {
                list.insert("maxItems".into(), json!(MAX_COMMAND_ARGS));
            }
            if let Some(Value::Object(items)) = list.get_mut("items") {
                items.insert("maxLength".into(), json!(MAX_ARG_LEN));
            }
        }
    }
    if let Some(name) = pointer(
        &mut schema,
        "/properties/spec/properties/containers/items/properties/name",
    ) {
        name.insert("maxLength".into(), json!(63));
    }
    schema
}

fn pointer<'a>(
    schema: &'a mut Schema,
    path: &str,
) -> Option<&'a mut serde_json::Map<String, Value>> {
    schema.pointer_mut(path)?.as_object_mut()
}

/// The name of an object such as a PersistentVolumeClaim.
pub fn dns_subdomain(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 253,
        "x-kubernetes-validations": [{
            "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
            "message": "must be the name of a PersistentVolumeClaim in this namespace: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        }]
    })
}

/// An absolute mount path inside the trainer container.
pub fn mount_path(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "default": "/checkpoints",
        "maxLength": 1024,
        "x-kubernetes-validations": [
            {
                "rule": "self.startsWith('/') && self != '/'",
                "message": "must be an absolute path other than /, e.g. /checkpoints"
            },
            {
                "rule": "self != '/dev/shm' && !self.startsWith('/dev/shm/')",
                "message": "must not be under /dev/shm: shared memory is lost with the pod, so checkpoints there do not survive a preemption"
            }
        ]
    })
}

fn quantity_rules() -> Value {
    json!([
        {
            "rule": "isQuantity(self)",
            "message": "must be a quantity such as 512Mi, 16Gi or 1G"
        },
        {
            "rule": "!isQuantity(self) || quantity(self).isGreaterThan(quantity('0'))",
            "message": "must be greater than zero"
        }
    ])
}

/// A quantity such as `16Gi`, required.
pub fn positive_quantity(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 64,
        "x-kubernetes-validations": quantity_rules()
    })
}

/// A quantity such as `16Gi`, optional.
pub fn optional_positive_quantity(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = positive_quantity(generator);
    schema.insert("nullable".into(), json!(true));
    schema
}

/// Conditions as a list-map keyed by `type`, as Kubernetes' own APIs do,
/// so server-side apply merges them per type.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"]
    })
}
