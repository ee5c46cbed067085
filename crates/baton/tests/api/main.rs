//! Integration tests: a real baton on a real port, real sockets, a real database
//! (SQLite by default, PostgreSQL with BATON_TEST_POSTGRES).

mod helpers;

mod admin_status;
mod bad_input;
mod bench;
mod concurrency;
mod fuzz;
mod group_commit;
mod lb_agent;
mod recovery;
mod rest;
mod shed;
mod socket;
mod store;
