//! Running libtorch on one thread for loops of many small LAPACK calls (a Monte Carlo, `align`'s
//! head pairs), while the large products around them keep every thread.

/// Runs `f` with libtorch limited to one thread, then restores the previous count. The Monte Carlo
/// is many small LAPACK calls; with several threads on a loaded 2-core machine OpenMP's spinning
/// made them 10–50× slower (measured: a 64×40 QR took 20 ms with 2 threads, 0.4 ms with 1).
pub fn single_threaded<T>(f: impl FnOnce() -> T) -> T {
    let previous = tch::get_num_threads();
    tch::set_num_threads(1);
    let result = f();
    tch::set_num_threads(previous);
    result
}
