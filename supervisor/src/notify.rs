//! (being written: see /work/brief3.md)
#![allow(dead_code)] // wired into the loop by the lead
