//! Checks of the training kernels' settings and of the `training` section: the field
//! tables of `contrastive`, `prompt_tune`, `training` and each optimizer, and the rules
//! that tie them to the kernel, `records_per_task` and the task count.

use serde_json::Value;

use super::walk::{Field, NumberBounds, Object, Report, expects, list_names, variant_fields};
use crate::manifest::{DEFAULT_PROMPT_LENGTH, DEFAULT_TRAIN_MAX_SEQ_LEN};

/// Names of the kernels that train in rounds.
const TRAINING_KERNELS: [&str; 2] = ["contrastive", "prompt_tune"];

const MAX_ROUNDS: i128 = 1_000_000;
const MAX_EPOCHS: i128 = 10_000;
const MAX_TASKS_PER_ROUND: i128 = 100_000;
const MAX_TOP_LAYERS: i128 = 48;
const MAX_PROMPT_LENGTH: i128 = 128;

/// Positions of a BERT model (`max_position_embeddings` of BERT and of
/// all-MiniLM-L6-v2). The kernel checks the model's own value when it loads it.
const MAX_POSITIONS: i128 = 512;

const TEMPERATURE: NumberBounds = NumberBounds::closed(0.001, 1.0);
const LEARNING_RATE: NumberBounds = NumberBounds {
    min: 0.0,
    min_exclusive: true,
    max: 10.0,
    max_exclusive: false,
};
const FRACTION_BELOW_ONE: NumberBounds = NumberBounds {
    min: 0.0,
    min_exclusive: false,
    max: 1.0,
    max_exclusive: true,
};
const WEIGHT_DECAY: NumberBounds = NumberBounds::closed(0.0, 1.0);
const EPSILON: NumberBounds = NumberBounds {
    min: 0.0,
    min_exclusive: true,
    max: 1.0,
    max_exclusive: false,
};

const MAX_SEQ_LEN_FIELD: Field = Field {
    name: "max_seq_len",
    required: false,
    expects: "an integer from 1 to 512, or leave it out for 128",
};

const TEMPERATURE_FIELD: Field = Field {
    name: "temperature",
    required: false,
    expects: "a number from 0.001 to 1, or leave it out for 0.05",
};

pub(super) const CONTRASTIVE_FIELDS: &[Field] = &[
    Field {
        name: "name",
        required: true,
        expects: "\"contrastive\"",
    },
    MAX_SEQ_LEN_FIELD,
    TEMPERATURE_FIELD,
    Field {
        name: "trainable",
        required: false,
        expects: "\"all\" or {\"top_layers\": N} with N from 1 to the model's layer count, or leave it out for {\"top_layers\": 2}",
    },
];

pub(super) const PROMPT_TUNE_FIELDS: &[Field] = &[
    Field {
        name: "name",
        required: true,
        expects: "\"prompt_tune\"",
    },
    MAX_SEQ_LEN_FIELD,
    TEMPERATURE_FIELD,
    Field {
        name: "prompt_length",
        required: false,
        expects: "an integer from 1 to 128, or leave it out for 8",
    },
    Field {
        name: "prompt_init",
        required: false,
        expects: "\"vocab\" or \"random\", or leave it out for \"vocab\"",
    },
];

const TOP_LAYERS_FIELDS: &[Field] = &[Field {
    name: "top_layers",
    required: true,
    expects: "an integer from 1 to 48, at most the model's layer count (6 for all-MiniLM-L6-v2)",
}];

const TRAINING_FIELDS: &[Field] = &[
    Field {
        name: "rounds",
        required: false,
        expects: "an integer from 1 to 1000000, the number of optimizer steps",
    },
    Field {
        name: "epochs",
        required: false,
        expects: "an integer from 1 to 10000, the number of passes over the job's tasks",
    },
    Field {
        name: "tasks_per_round",
        required: true,
        expects: "an integer from 1 to the job's task count, the micro-batches averaged into one optimizer step",
    },
    Field {
        name: "optimizer",
        required: true,
        expects: "{\"name\": \"adamw\", \"lr\": 2e-5} or {\"name\": \"sgd\", \"lr\": 0.01, \"momentum\": 0.9}",
    },
    Field {
        name: "seed",
        required: false,
        expects: "an integer from 0 to 18446744073709551615, or leave it out for 0",
    },
];

const LR_FIELD: Field = Field {
    name: "lr",
    required: true,
    expects: "a number greater than 0 and at most 10, such as 2e-5 for AdamW",
};

const SGD_FIELDS: &[Field] = &[
    Field {
        name: "name",
        required: true,
        expects: "\"sgd\"",
    },
    LR_FIELD,
    Field {
        name: "momentum",
        required: false,
        expects: "a number from 0 to below 1, or leave it out for 0",
    },
    Field {
        name: "weight_decay",
        required: false,
        expects: "a number from 0 to 1, or leave it out for 0",
    },
];

const ADAMW_FIELDS: &[Field] = &[
    Field {
        name: "name",
        required: true,
        expects: "\"adamw\"",
    },
    LR_FIELD,
    Field {
        name: "betas",
        required: false,
        expects: "an array of two numbers, each from 0 to below 1, or leave it out for [0.9, 0.999]",
    },
    Field {
        name: "eps",
        required: false,
        expects: "a number greater than 0 and at most 1, or leave it out for 1e-8",
    },
    Field {
        name: "weight_decay",
        required: false,
        expects: "a number from 0 to 1, or leave it out for 0.01",
    },
];

const OPTIMIZERS: &[(&str, &[Field])] = &[("sgd", SGD_FIELDS), ("adamw", ADAMW_FIELDS)];

/// Checks the settings of a training kernel, `name` being `contrastive` or `prompt_tune`.
pub(super) fn check_kernel_settings(report: &mut Report, settings: &Object, name: &str) {
    let max_seq_len = settings.integer(report, "max_seq_len", 1..=512);
    settings.number(report, "temperature", TEMPERATURE);

    if name == "contrastive" {
        if let Some(trainable) = settings.get("trainable") {
            check_trainable(report, &settings.path_of("trainable"), trainable);
        }
        return;
    }

    let prompt_length = settings.integer(report, "prompt_length", 1..=MAX_PROMPT_LENGTH);
    if let Some(init) = settings.get("prompt_init")
        && !matches!(init.as_str(), Some("vocab" | "random"))
    {
        let path = settings.path_of("prompt_init");
        report.reject(
            &path,
            Some(init),
            "invalid prompt_init: expected \"vocab\" or \"random\"",
            format!(
                "set `{path}` to {}",
                expects(PROMPT_TUNE_FIELDS, "prompt_init")
            ),
        );
    }

    let prompt_set = settings.get("prompt_length").is_some();
    let (Some(prompt_length), Some(max_seq_len)) = (
        prompt_length.or((!prompt_set).then_some(i128::from(DEFAULT_PROMPT_LENGTH))),
        max_seq_len.or(settings
            .get("max_seq_len")
            .is_none()
            .then_some(i128::from(DEFAULT_TRAIN_MAX_SEQ_LEN))),
    ) else {
        return;
    };
    let positions = prompt_length + max_seq_len;
    if positions > MAX_POSITIONS {
        let field = if prompt_set {
            "prompt_length"
        } else {
            "max_seq_len"
        };
        let path = settings.path_of(field);
        report.reject(
            &path,
            settings.get(field),
            format!(
                "too many positions: prompt_length plus max_seq_len is {positions}, but BERT models have {MAX_POSITIONS} positions"
            ),
            format!(
                "lower `prompt_length` or `max_seq_len` so that together they are at most {MAX_POSITIONS}"
            ),
        );
    }
}

/// Checks `trainable`: the string `"all"` or an object `{"top_layers": N}`.
fn check_trainable(report: &mut Report, path: &str, trainable: &Value) {
    let fix = format!(
        "set `{path}` to {}",
        expects(CONTRASTIVE_FIELDS, "trainable")
    );
    match trainable {
        Value::String(text) if text == "all" => {}
        Value::String(_) => report.reject(
            path,
            Some(trainable),
            "invalid trainable: the only string value is \"all\"",
            fix,
        ),
        Value::Object(_) => {
            let expected = "an object {\"top_layers\": N}";
            if let Some(layers) = Object::open(report, path, trainable, TOP_LAYERS_FIELDS, expected)
            {
                layers.integer(report, "top_layers", 1..=MAX_TOP_LAYERS);
            }
        }
        other => report.reject_type(path, other, "a string or an object", fix),
    }
}

/// Checks that `training` is present exactly for the training kernels and valid, and
/// that a training job's tasks have at least 2 records each. `tasks` is the job's task
/// count when the inputs and `records_per_task` are valid.
pub(super) fn check_training(
    report: &mut Report,
    top: &Object,
    tasks: Option<u64>,
    records_per_task: Option<i128>,
) {
    let kernel = top
        .get("kernel")
        .and_then(|kernel| kernel.get("name"))
        .and_then(Value::as_str);
    let trains = kernel.is_some_and(|name| TRAINING_KERNELS.contains(&name));
    let training = top.get("training");
    let path = top.path_of("training");

    match (kernel, trains, training) {
        (Some(name), false, Some(value)) => report.reject(
            &path,
            Some(value),
            format!("the {name} kernel does not train, so `training` does not apply"),
            format!(
                "remove `training`, or set `kernel.name` to one of {}",
                list_names(TRAINING_KERNELS)
            ),
        ),
        (Some(name), true, None) => report.reject(
            &path,
            None,
            format!("missing required field `training`: the {name} kernel trains in rounds"),
            format!(
                "add `training`: {}",
                expects(super::sections::MANIFEST_FIELDS, "training")
            ),
        ),
        (_, true, Some(value)) => check_training_section(report, &path, value, tasks),
        _ => {}
    }

    if trains && records_per_task == Some(1) {
        let per_task_path = top.path_of("records_per_task");
        report.reject(
            &per_task_path,
            top.get("records_per_task"),
            "invalid value 1: a training task contrasts each pair with the other pairs of its micro-batch, so it needs at least 2 records",
            format!("set `{per_task_path}` to at least 2; 32 or more gives each pair more negatives"),
        );
    }
}

fn check_training_section(report: &mut Report, path: &str, value: &Value, tasks: Option<u64>) {
    let training_expects = expects(super::sections::MANIFEST_FIELDS, "training");
    let Some(training) = Object::open(report, path, value, TRAINING_FIELDS, training_expects)
    else {
        return;
    };

    let rounds_set = training.get("rounds").is_some();
    let epochs_set = training.get("epochs").is_some();
    training.integer(report, "rounds", 1..=MAX_ROUNDS);
    let epochs = training.integer(report, "epochs", 1..=MAX_EPOCHS);
    if rounds_set == epochs_set {
        let problem = if rounds_set {
            "invalid training: both `rounds` and `epochs` are set"
        } else {
            "missing training length: neither `rounds` nor `epochs` is set"
        };
        report.reject(
            path,
            None,
            problem,
            "set exactly one: `rounds` (optimizer steps) or `epochs` (passes over the job's tasks)",
        );
    }

    let tasks_per_round = training.integer(report, "tasks_per_round", 1..=MAX_TASKS_PER_ROUND);
    if let (Some(per_round), Some(tasks)) = (tasks_per_round, tasks)
        && per_round > i128::from(tasks)
    {
        let field_path = training.path_of("tasks_per_round");
        report.reject(
            &field_path,
            training.get("tasks_per_round"),
            format!("too many tasks per round: the job slices into only {tasks} tasks"),
            format!(
                "set `{field_path}` to at most {tasks}, or add inputs or lower `records_per_task`"
            ),
        );
    }
    if let (Some(epochs), Some(per_round), Some(tasks)) = (epochs, tasks_per_round, tasks) {
        let rounds = epochs * (i128::from(tasks) / per_round);
        if rounds > MAX_ROUNDS {
            report.reject(
                &training.path_of("epochs"),
                training.get("epochs"),
                format!("too many rounds: {epochs} epochs of {} rounds each make {rounds}, the maximum is {MAX_ROUNDS}", i128::from(tasks) / per_round),
                "lower `epochs`, or raise `tasks_per_round` so that each epoch has fewer rounds",
            );
        }
    }

    training.integer(report, "seed", 0..=i128::from(u64::MAX));
    if let Some(optimizer) = training.get("optimizer") {
        check_optimizer(report, &training.path_of("optimizer"), optimizer);
    }
}

fn check_optimizer(report: &mut Report, path: &str, optimizer: &Value) {
    if !optimizer.is_object() {
        let fix = format!("set `{path}` to {}", expects(TRAINING_FIELDS, "optimizer"));
        report.reject_type(path, optimizer, "an object", fix);
        return;
    }
    let Some(fields) = variant_fields(report, path, optimizer, OPTIMIZERS, "optimizer") else {
        return;
    };
    let Some(settings) = Object::open(report, path, optimizer, fields, "an object") else {
        return;
    };

    settings.number(report, "lr", LEARNING_RATE);
    settings.number(report, "weight_decay", WEIGHT_DECAY);
    if optimizer.get("name").and_then(Value::as_str) == Some("sgd") {
        settings.number(report, "momentum", FRACTION_BELOW_ONE);
        return;
    }
    settings.number(report, "eps", EPSILON);
    if let Some(betas) = settings.get("betas") {
        check_betas(report, &settings.path_of("betas"), betas);
    }
}

/// Checks AdamW's `betas`: an array of two numbers, each from 0 to below 1.
fn check_betas(report: &mut Report, path: &str, betas: &Value) {
    let fix = format!("set `{path}` to {}", expects(ADAMW_FIELDS, "betas"));
    let Some(items) = betas.as_array() else {
        report.reject_type(path, betas, "an array", fix);
        return;
    };
    if items.len() != 2 {
        report.reject(
            path,
            Some(betas),
            format!("invalid betas: expected 2 numbers, found {}", items.len()),
            fix,
        );
        return;
    }
    for (index, item) in items.iter().enumerate() {
        let valid = item.as_f64().is_some_and(|beta| (0.0..1.0).contains(&beta));
        if !valid {
            report.reject(
                &format!("{path}[{index}]"),
                Some(item),
                format!(
                    "invalid beta: expected a number {}",
                    FRACTION_BELOW_ONE.describe()
                ),
                fix.clone(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::manifest::{Kernel, Optimizer, Trainable, parse};

    /// Returns a valid `contrastive` manifest over 2 shards of 64 pairs, 32 per task,
    /// which makes 4 tasks.
    fn document() -> Value {
        json!({
            "version": 1,
            "name": "debian-pairs",
            "kernel": {"name": "contrastive"},
            "training": {
                "rounds": 10,
                "tasks_per_round": 2,
                "optimizer": {"name": "adamw", "lr": 2e-5},
                "seed": 7
            },
            "model": {"uri": "file:///opt/models/minilm/", "sha256": "ab".repeat(32)},
            "inputs": [
                {"uri": "file:///srv/pairs/train-00000.jsonl", "sha256": "cd".repeat(32), "records": 64},
                {"uri": "file:///srv/pairs/train-00001.jsonl", "sha256": "ef".repeat(32), "records": 64}
            ],
            "records_per_task": 32,
            "output": "file:///srv/out/",
            "worker": {"binary_sha256": "01".repeat(32)}
        })
    }

    fn errors(document: &Value) -> Vec<crate::manifest::ManifestError> {
        match parse(&serde_json::to_vec(document).unwrap()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0,
        }
    }

    fn single_error(document: &Value) -> crate::manifest::ManifestError {
        let mut errors = errors(document);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.remove(0)
    }

    #[test]
    fn example_manifest_is_valid() {
        let example = include_str!("../../../../docs/examples/contrastive-manifest.json");

        let manifest = parse(example.as_bytes()).unwrap();

        // 2 shards of 1024 pairs in tasks of 32: 64 tasks, 8 rounds per epoch.
        let training = manifest.training.unwrap();
        assert_eq!(crate::train::total_rounds(&training, 64), 8);
    }

    #[test]
    fn contrastive_defaults_apply() {
        let manifest = parse(&serde_json::to_vec(&document()).unwrap()).unwrap();

        assert_eq!(
            manifest.kernel,
            Kernel::Contrastive {
                max_seq_len: 128,
                temperature: 0.05,
                trainable: Trainable::TopLayers(2),
            }
        );
        let training = manifest.training.unwrap();
        assert_eq!(
            training.optimizer,
            Optimizer::AdamW {
                lr: 2e-5,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: 0.01,
            }
        );
        assert_eq!(training.seed, 7);
    }

    #[test]
    fn prompt_tune_and_sgd_parse() {
        let mut document = document();
        document["kernel"] = json!({"name": "prompt_tune", "prompt_length": 16, "prompt_init": "random", "temperature": 0.1});
        document["training"]["optimizer"] = json!({"name": "sgd", "lr": 0.3, "momentum": 0.9});

        let manifest = parse(&serde_json::to_vec(&document).unwrap()).unwrap();

        assert_eq!(manifest.kernel.name(), "prompt_tune");
        assert!(manifest.kernel.is_training());
    }

    #[test]
    fn trainable_accepts_both_forms() {
        for trainable in [json!("all"), json!({"top_layers": 6})] {
            let mut document = document();
            document["kernel"]["trainable"] = trainable.clone();
            assert!(errors(&document).is_empty(), "{trainable}");
        }
    }

    #[test]
    fn trainable_rejects_other_values() {
        let cases = [
            (json!("top"), "kernel.trainable", "only string value"),
            (
                json!({"top_layers": 0}),
                "kernel.trainable.top_layers",
                "from 1 to 48",
            ),
            (
                json!({"layers": 2}),
                "kernel.trainable.layers",
                "unknown field",
            ),
            (json!(2), "kernel.trainable", "invalid type"),
        ];
        for (trainable, path, problem) in cases {
            let mut document = document();
            document["kernel"]["trainable"] = trainable.clone();
            let errors = errors(&document);
            let error = errors
                .iter()
                .find(|error| error.path == path)
                .unwrap_or_else(|| panic!("{trainable}: no error at {path}: {errors:#?}"));
            assert!(
                error.problem.contains(problem),
                "{trainable}: {}",
                error.problem
            );
        }
    }

    #[test]
    fn temperature_out_of_range() {
        let mut document = document();
        document["kernel"]["temperature"] = json!(0);

        let error = single_error(&document);

        assert_eq!(error.path, "kernel.temperature");
        assert_eq!(error.value, "0");
        assert!(
            error.problem.contains("from 0.001 to 1"),
            "{}",
            error.problem
        );
        assert!(error.fix.contains("leave it out for 0.05"), "{}", error.fix);
    }

    #[test]
    fn temperature_as_string_is_wrong_type() {
        let mut document = document();
        document["kernel"]["temperature"] = json!("0.05");

        let error = single_error(&document);

        assert!(
            error.problem.contains("expected a number"),
            "{}",
            error.problem
        );
    }

    #[test]
    fn embed_rejects_training() {
        let mut document = document();
        document["kernel"] = json!({"name": "embed"});

        let error = single_error(&document);

        assert_eq!(error.path, "training");
        assert!(
            error.problem.contains("does not train"),
            "{}",
            error.problem
        );
    }

    #[test]
    fn training_kernel_needs_training() {
        let mut document = document();
        document.as_object_mut().unwrap().remove("training");

        let error = single_error(&document);

        assert_eq!(error.path, "training");
        assert!(
            error.problem.contains("missing required field"),
            "{}",
            error.problem
        );
        assert!(error.fix.contains("tasks_per_round"), "{}", error.fix);
    }

    #[test]
    fn rounds_and_epochs_are_exclusive() {
        let mut both = document();
        both["training"]["epochs"] = json!(2);
        assert!(single_error(&both).problem.contains("both"));

        let mut neither = document();
        neither["training"]
            .as_object_mut()
            .unwrap()
            .remove("rounds");
        assert!(single_error(&neither).problem.contains("neither"));
    }

    #[test]
    fn tasks_per_round_fits_task_count() {
        let mut document = document();
        document["training"]["tasks_per_round"] = json!(5);

        let error = single_error(&document);

        assert_eq!(error.path, "training.tasks_per_round");
        assert!(error.problem.contains("only 4 tasks"), "{}", error.problem);
        assert!(error.fix.contains("at most 4"), "{}", error.fix);
    }

    #[test]
    fn training_needs_two_records_per_task() {
        let mut document = document();
        document["records_per_task"] = json!(1);
        document["training"]["tasks_per_round"] = json!(1);

        let error = single_error(&document);

        assert_eq!(error.path, "records_per_task");
        assert!(error.fix.contains("at least 2"), "{}", error.fix);
    }

    #[test]
    fn optimizer_settings_are_checked() {
        let cases = [
            (
                json!({"name": "adamw", "lr": 0}),
                "training.optimizer.lr",
                "greater than 0",
            ),
            (
                json!({"name": "adamw", "lr": 1e-3, "betas": [0.9]}),
                "training.optimizer.betas",
                "expected 2 numbers",
            ),
            (
                json!({"name": "adamw", "lr": 1e-3, "betas": [0.9, 1.0]}),
                "training.optimizer.betas[1]",
                "below 1",
            ),
            (
                json!({"name": "adamw", "lr": 1e-3, "eps": 0}),
                "training.optimizer.eps",
                "greater than 0",
            ),
            (
                json!({"name": "sgd", "lr": 0.1, "momentum": 1}),
                "training.optimizer.momentum",
                "from 0 to below 1",
            ),
            (
                json!({"name": "sgd", "lr": 0.1, "betas": [0.9, 0.99]}),
                "training.optimizer.betas",
                "unknown field",
            ),
            (
                json!({"name": "sgd"}),
                "training.optimizer.lr",
                "missing required field",
            ),
            (
                json!({"name": "adam", "lr": 0.1}),
                "training.optimizer.name",
                "unknown optimizer `adam`",
            ),
        ];
        for (optimizer, path, problem) in cases {
            let mut document = document();
            document["training"]["optimizer"] = optimizer.clone();
            let error = single_error(&document);
            assert_eq!(error.path, path, "{optimizer}");
            assert!(
                error.problem.contains(problem),
                "{optimizer}: {}",
                error.problem
            );
        }
    }

    #[test]
    fn unknown_optimizer_suggests_near_name() {
        let mut document = document();
        document["training"]["optimizer"] = json!({"name": "adamW", "lr": 0.1});

        let error = single_error(&document);

        assert!(error.fix.contains("did you mean `adamw`?"), "{}", error.fix);
    }

    #[test]
    fn prompt_and_sequence_fit_positions() {
        let mut document = document();
        document["kernel"] =
            json!({"name": "prompt_tune", "prompt_length": 100, "max_seq_len": 450});

        let error = single_error(&document);

        assert_eq!(error.path, "kernel.prompt_length");
        assert!(error.problem.contains("550"), "{}", error.problem);
    }

    #[test]
    fn prompt_init_rejects_unknown_value() {
        let mut document = document();
        document["kernel"] = json!({"name": "prompt_tune", "prompt_init": "zeros"});

        let error = single_error(&document);

        assert_eq!(error.path, "kernel.prompt_init");
    }

    #[test]
    fn epochs_count_rounds() {
        let mut document = document();
        document["training"]
            .as_object_mut()
            .unwrap()
            .remove("rounds");
        document["training"]["epochs"] = json!(3);

        let manifest = parse(&serde_json::to_vec(&document).unwrap()).unwrap();

        let training = manifest.training.unwrap();
        assert_eq!(crate::train::total_rounds(&training, 4), 6);
    }
}
