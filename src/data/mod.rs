//! Training and evaluation data: reading corpora and prompt/answer records, turning them into
//! token sequences with a loss region, and batching them.

pub mod batch;
pub mod records;
pub mod sequences;
pub mod tasks;

pub use batch::Batch;
pub use records::{read_records, read_texts, record_kind, Record, RecordKind};
pub use sequences::{load_training_data, pack_blocks, record_sequence, Dataset, Sequence};
