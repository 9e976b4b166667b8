pub mod request_model;
