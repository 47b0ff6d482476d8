//! Run-time type checks for the host paths that replace one backend's operations.
//!
//! burn 0.21 offers no way to give one backend its own version of an operation without a new
//! trait bound on every generic function that uses it. Code that is generic over `B: Backend`
//! asks [`is`] whether `B` is the backend it has a faster path for (burn-flex), and moves its
//! tensors across with [`cast`]. `bank-losses` (the bank softmax's row passes) and `bank-train`
//! (the convolutions and max-pools) use it.

use std::any::{Any, TypeId};

/// Whether `T` is `U`.
pub fn is<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// `value` as a `U` when `T` is `U` ([`is`]), else `None`.
pub fn cast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let boxed: Box<dyn Any> = Box::new(value);
    boxed.downcast::<U>().ok().map(|value| *value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_type_casts() {
        assert!(is::<Vec<f32>, Vec<f32>>());
        assert!(!is::<Vec<f32>, Vec<f64>>());
        assert_eq!(cast::<_, Vec<f32>>(vec![1.5f32]), Some(vec![1.5f32]));
        assert_eq!(cast::<_, Vec<f64>>(vec![1.5f32]), None);
    }
}
