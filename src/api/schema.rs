//! Schema overrides for fields whose derived schema cannot say enough:
//! CEL rules with messages a user can act on, and the size bounds that let
//! the API server accept those rules within its CEL cost budget.

use super::cel;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Rule;
use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::{json, Value};

/// The longest argument accepted in the trainer's command. CEL cost is
/// estimated from the worst case, so every string a rule reads is bounded.
const MAX_ARG_LEN: u64 = 4096;
const MAX_COMMAND_ARGS: u64 = 256;
const MAX_CONTAINERS: u64 = 32;
/// Mounts per container and the length of a mount path, bounded for the
/// same reason (Linux's PATH_MAX is 4096; no real mount path nears 512).
const MAX_MOUNTS: u64 = 64;
const MAX_PATH_LEN: u64 = 512;

/// Env vars per container, and the length of a resource quantity.
const MAX_ENV: u64 = 256;
const MAX_QUANTITY_LEN: u64 = 64;

const CONTAINERS: &str = "/properties/spec/properties/containers";

/// A PodTemplateSpec whose containers carry the trainer rules.
pub fn pod_template(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<PodTemplateSpec>();
    set(&mut schema, CONTAINERS, "maxItems", json!(MAX_CONTAINERS));
    set(
        &mut schema,
        CONTAINERS,
        "x-kubernetes-validations",
        Value::Array(container_rules()),
    );
    for (list, what) in [
        ("initContainers", "initContainers: names starting with tj- are reserved for the operator's own init container (tj-launcher-install); rename the init container"),
        ("volumes", "volumes: names starting with tj- are reserved for the operator's volumes (tj-launcher, tj-checkpoints, tj-shm); rename the volume and its volumeMounts"),
    ] {
        let rules = json!([cel::rule(cel::names_not_reserved(), what)]);
        set(&mut schema, &format!("/properties/spec/properties/{list}"), "x-kubernetes-validations", rules);
    }
    let item = format!("{CONTAINERS}/items/properties");
    let quantity = |bound: &str| format!("resources/properties/{bound}/additionalProperties");
    let bounds = [
        ("command".to_string(), "maxItems", MAX_COMMAND_ARGS),
        ("args".into(), "maxItems", MAX_COMMAND_ARGS * 4),
        ("command/items".into(), "maxLength", MAX_ARG_LEN),
        ("args/items".into(), "maxLength", MAX_ARG_LEN),
        ("name".into(), "maxLength", 63),
        ("volumeMounts".into(), "maxItems", MAX_MOUNTS),
        (
            "volumeMounts/items/properties/mountPath".into(),
            "maxLength",
            MAX_PATH_LEN,
        ),
        ("env".into(), "maxItems", MAX_ENV),
        (quantity("limits"), "maxLength", MAX_QUANTITY_LEN),
        (quantity("requests"), "maxLength", MAX_QUANTITY_LEN),
    ];
    for (field, key, value) in bounds {
        set(&mut schema, &format!("{item}/{field}"), key, json!(value));
    }
    schema
}

/// Rules on the template's containers; most are about the trainer.
fn container_rules() -> Vec<Value> {
    let trainer = |body: &str| cel::for_trainer("self", body);
    vec![
        cel::rule(
            "self.size() == 1 || self.exists_one(c, c.name == 'trainer')",
            "name exactly one container `trainer`, or give a single container: it is the one the operator runs under its launcher",
        ),
        cel::rule(
            trainer("has(t.command) && size(t.command) > 0"),
            "the trainer container needs `command` in exec form, e.g. [\"python\", \"train.py\"]: the operator runs it under its launcher and cannot read the image's ENTRYPOINT",
        ),
        cel::rule(
            trainer("!has(t.command) || size(t.command) == 0 || !t.command[0].contains('$(')"),
            "the trainer's command[0] must name the program itself, not $(VAR): the kubelet expands it from the environment, so it could start a shell. Write the program, e.g. \"python3\" or \"/usr/bin/python3\"",
        ),
        cel::rule(
            trainer(&cel::trainer_not_shell_form()),
            "the trainer's command is shell form (`sh -c \"...\"`, also behind env, busybox, tini, timeout and the like, with flags before -c, or with -c in args): a shell does not forward SIGTERM, so the trainer would be SIGKILLed without saving. Give the program and its arguments directly, e.g. [\"python\", \"train.py\", \"--lr\", \"0.1\"]",
        ),
        cel::rule(
            trainer(&cel::trainer_mounts_not(cel::RESERVED_PATH_REGEX)),
            "the trainer's volumeMounts must not use /tj, /dev/shm, /dev/termination-log or a path below them, however written (/dev//shm, /tj/): the operator mounts its launcher at /tj and /dev/shm from spec.sharedMemory, and reads its report from /dev/termination-log. Size /dev/shm with spec.sharedMemory and mount your volumes elsewhere",
        ),
        cel::rule(
            trainer(&cel::trainer_mounts_not(cel::DOTDOT_REGEX)),
            "the trainer's volumeMounts[].mountPath must not contain `..` segments: write the absolute path it resolves to",
        ),
        cel::rule(
            trainer(&cel::trainer_env_not_reserved()),
            "the trainer's env must not set TJ_* nor RANK, WORLD_SIZE, MASTER_ADDR or MASTER_PORT: the operator sets them for each rank and attempt, and its launcher reads TJ_*. Rename the variable or drop it",
        ),
        cel::rule(
            cel::names_not_reserved(),
            "containers: names starting with tj- are reserved for the operator (its init container is tj-launcher-install); rename the container",
        ),
    ]
}

/// Sets `key` on the schema object at `path`. A path the generated schema
/// lacks would silently drop a rule, so it stops the build of the CRD.
fn set(schema: &mut Schema, path: &str, key: &str, value: Value) {
    pointer(schema, path)
        .unwrap_or_else(|| panic!("the PodTemplateSpec schema has no {path}"))
        .insert(key.into(), value);
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
    let shm = r"^(/|\./)*dev/(/|\./)*shm(/.*)?$";
    json_schema!({
        "type": "string",
        "default": "/checkpoints",
        "maxLength": 1024,
        "x-kubernetes-validations": [
            cel::rule("self.startsWith('/') && self != '/'", "must be an absolute path other than /, e.g. /checkpoints"),
            cel::rule(
                format!("!self.matches({})", cel::quote(shm)),
                "must not be under /dev/shm: shared memory is lost with the pod, so checkpoints there do not survive a preemption",
            ),
            cel::rule(
                format!("!self.matches({})", cel::quote(cel::RESERVED_PATH_REGEX)),
                "must not be /tj, /dev/termination-log or below them, however written: the operator mounts its launcher at /tj and reads its report from /dev/termination-log. Use e.g. /checkpoints",
            ),
            cel::rule(
                format!("!self.matches({})", cel::quote(cel::DOTDOT_REGEX)),
                "must not contain `..` segments: write the absolute path it resolves to, e.g. /checkpoints",
            )
        ]
    })
}

/// A directory inside the checkpoint claim, relative to its root.
pub fn sub_path(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 253,
        "x-kubernetes-validations": [
            cel::rule("!self.startsWith('/')", "must be relative to the claim's root, e.g. my-job (or \"\" for the root itself)"),
            cel::rule(
                format!("!self.matches({})", cel::quote(cel::DOTDOT_REGEX)),
                "must not contain `..` segments: the job's checkpoints stay inside its claim",
            )
        ]
    })
}

/// The largest byte quantity accepted: far beyond any checkpoint or
/// /dev/shm, and far below what the operator's byte counts can hold.
pub const MAX_BYTES: &str = "1Pi";

fn quantity_rules() -> Value {
    json!([
        cel::rule("isQuantity(self)", "must be a quantity such as 512Mi, 16Gi or 1G"),
        cel::rule(
            "!isQuantity(self) || quantity(self).isGreaterThan(quantity('0'))",
            "must be greater than zero",
        ),
        cel::rule(
            "!self.endsWith('m')",
            "must be in bytes, without the m suffix: a lowercase m means thousandths, so 512m is half a byte. Write 512M (megabytes) or 512Mi (mebibytes)",
        ),
        // isInteger() is false for 1.5Gi (a decimal mantissa), so a whole
        // number is tested on the float, exact below 2^53 (> MAX_BYTES).
        cel::rule(
            format!(
                "!isQuantity(self) || quantity(self).compareTo(quantity('{MAX_BYTES}')) > 0 || \
                 double(int(quantity(self).asApproximateFloat())) == quantity(self).asApproximateFloat()"
            ),
            "must be a whole number of bytes, e.g. 1536Mi rather than 1.5",
        ),
        cel::rule(
            format!("!isQuantity(self) || quantity(self).compareTo(quantity('{MAX_BYTES}')) <= 0"),
            &format!("must be at most {MAX_BYTES}: check the exponent or the suffix (1e400 is not a size)"),
        )
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

/// Rules on the whole spec: what needs two of its fields at once.
pub fn spec_rules() -> Value {
    let containers = "self.template.spec.containers";
    let has_memory =
        "has(t.resources) && has(t.resources.limits) && 'memory' in t.resources.limits \
                      && isQuantity(string(t.resources.limits['memory']))";
    let memory = "quantity(string(t.resources.limits['memory']))";
    let shm = "self.sharedMemory";
    let data_loader = "self.sharedMemory.dataLoader";
    let headroom = crate::shm::HEADROOM_BYTES as f64;
    let segments = |path: &str| format!("{path}.split('/', 64).filter(s, s != '' && s != '.')");
    json!([
        cel::rule(
            format!(
                "!has({shm}) || !has({shm}.sizeLimit) || !isQuantity({shm}.sizeLimit) || !has(self.template.spec) || {}",
                cel::for_trainer(containers, &format!("!({has_memory}) || quantity({shm}.sizeLimit).isLessThan({memory})"))
            ),
            "spec.sharedMemory.sizeLimit must be below the trainer's resources.limits.memory: /dev/shm pages count against the memory limit, so the trainer would be OOM-killed as /dev/shm fills. Raise limits.memory or lower sizeLimit",
        ),
        cel::rule(
            format!(
                "!has({shm}) || !has({data_loader}) || !isQuantity({data_loader}.batchBytes) || !has(self.template.spec) || {}",
                cel::for_trainer(containers, &format!(
                    "!({has_memory}) || quantity({data_loader}.batchBytes).asApproximateFloat() \
                     * (double({data_loader}.workers) * double({data_loader}.prefetchFactor) + 1.0) * 1.25 \
                     + {headroom:.1} < {memory}.asApproximateFloat()"
                ))
            ),
            "the /dev/shm that spec.sharedMemory.dataLoader asks for (batchBytes x (workers x prefetchFactor + 1) x 1.25 + 256Mi) must be below the trainer's resources.limits.memory: /dev/shm pages count against it. Raise limits.memory, or lower workers, prefetchFactor or batchBytes",
        ),
        cel::rule(
            format!(
                "!has(self.template.spec) || {}",
                cel::for_trainer(containers, &format!(
                    "!has(t.volumeMounts) || t.volumeMounts.all(m, {} != {})",
                    segments("m.mountPath"),
                    segments("self.checkpoint.mountPath")
                ))
            ),
            "the trainer's volumeMounts must not use spec.checkpoint.mountPath: the operator mounts the checkpoint claim there. Change checkpoint.mountPath or the template's mount",
        )
    ])
}

// The job's name is a label value; with several ranks it also names the
// headless Service and is the stem of each pod's hostname.
const NAME: &str = "self.metadata.name";
const LAST_RANK: &str = "string(self.spec.replicas - 1)";

/// metadata.name fits in a label value.
pub fn name_length_rule() -> Rule {
    Rule::new(format!("size({NAME}) <= 63")).message(
        "metadata.name must be at most 63 characters: it is the value of the trainingjob.dev/job label on every pod. Choose a shorter name",
    )
}

/// With several ranks, metadata.name is a Service name and a hostname stem.
pub fn name_dns_label_rule() -> Rule {
    Rule::new(format!(
        "self.spec.replicas <= 1 || {NAME}.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    ))
    .message(
        "metadata.name must be a DNS-1035 label when replicas is above 1 (lowercase letters, digits and '-', starting with a letter, no '.'): it names the headless Service and each pod's hostname <name>-r<rank>. Rename the job, e.g. run-1st or llm-v2",
    )
}

/// With several ranks, the last rank's hostname fits in a DNS label.
pub fn hostname_length_rule() -> Rule {
    Rule::new(format!(
        "self.spec.replicas <= 1 || size({NAME}) + 2 + size({LAST_RANK}) <= 63"
    ))
    .message(
        "metadata.name is too long for this many replicas: the last rank's hostname <name>-r<replicas-1> must fit in 63 characters. Shorten the name to at most 61 characters minus the digits of replicas-1 (59 for 10 to 100 replicas)",
    )
}
