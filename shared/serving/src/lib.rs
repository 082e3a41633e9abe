//! The model-serving stack both disease services run. diabetes-svc and heart-svc differ only
//! in a [`DiseaseSpec`] (names, image route, embedded defaults); everything else is here,
//! laid out by layer:
//!
//! | module | what it holds |
//! |---|---|
//! | [`settings`] | the settings tree of a disease service, and its checks |
//! | [`state`] | what the routes share ([`state::DiseaseModels`]): the two models, limits, budgets |
//! | [`app`] | the service assembled: its models (nothing loaded) and its HTTP application |
//! | [`routes`] | one file per route: predictions, models and cards, warm-up and unload, readiness |
//! | [`v2`] | the Open Inference Protocol (KServe V2) routes, their wire types and tensors |
//! | [`inference`] | what every prediction route does: run a model, decode an upload, record |
//! | [`prediction`] | the prediction a route answers, built from a model's output and its card |
//! | [`explain`] | explanations of a prediction: TreeSHAP contributions for tabular models |
//! | [`upload`] | reading a multipart upload within the memory it may hold |
//! | [`budget`] | the memory budgets the uploads and decodes of one service share |
//! | [`inputs`] | tabular validation, image decoding and preprocessing |
//! | [`error`] | why a model could not be loaded, by kind |
//! | [`model`] | the lazy model holder: state, load, file verification, the memory guard, downloads |
//! | [`optimize`] | the `optimize-models` command: offline-optimised variants of the image models |
//! | [`card`] | model cards: the source of truth for a model |
//! | [`runtime`] | the ONNX Runtime library and its session settings |
//! | [`chain`] | the chain-svc client that records predictions |

pub mod app;
pub mod budget;
pub mod card;
pub mod chain;
pub mod error;
pub mod explain;
pub mod inference;
pub mod inputs;
pub mod model;
pub mod optimize;
pub mod prediction;
pub mod routes;
pub mod runtime;
pub mod settings;
pub mod state;
pub mod upload;
pub mod v2;

pub use app::build;
pub use settings::{DiseaseSettings, DiseaseSpec};
