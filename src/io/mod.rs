//! Reading and writing what users bring and take away: checkpoints (GGUF, Hugging Face
//! directories), the tokenizer, the demo model download, and atomic file writes.

pub mod atomic;
pub mod checkpoint;
pub mod fetch;
pub mod gguf;
pub mod hf_dir;
pub mod offsite_file;
pub mod provenance;
pub mod tensor_file;
pub mod tokenizer;
