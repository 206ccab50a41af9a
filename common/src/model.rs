//! The model digest: one SHA-256 that pins every file a kernel loads.
//!
//! The digest is the SHA-256 of the text that `sha256sum config.json model.safetensors
//! tokenizer.json` prints inside the model directory: one `<hex>  <name>` line per
//! file, in that (sorted) order. Admins can recompute it with coreutils alone.

use crate::digest::Sha256Hex;

/// Files of a model directory, sorted by name as the digest requires.
pub const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// Computes the model digest from each file's SHA-256, given in [`MODEL_FILES`] order.
pub fn model_digest(file_digests: &[Sha256Hex; 3]) -> Sha256Hex {
    let mut listing = String::new();
    for (name, digest) in MODEL_FILES.iter().zip(file_digests) {
        listing.push_str(&format!("{digest}  {name}\n"));
    }
    Sha256Hex::of(listing.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_sha256sum_listing() {
        let digests = [
            Sha256Hex::of(b"a"),
            Sha256Hex::of(b"b"),
            Sha256Hex::of(b"c"),
        ];
        let listing = format!(
            "{}  config.json\n{}  model.safetensors\n{}  tokenizer.json\n",
            digests[0], digests[1], digests[2]
        );
        assert_eq!(model_digest(&digests), Sha256Hex::of(listing.as_bytes()));
    }
}
