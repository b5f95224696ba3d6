//! float64 to float16 and bfloat16, rounded once to nearest even, as numpy's `astype` rounds.
//!
//! The `half` crate's `from_f64` drops the low 32 bits of the mantissa before it rounds (or,
//! with F16C, rounds through f32), so a value just above a tie, such as 1.000488281250001 for
//! float16, lands on the even neighbour below: numpy, and TensorFlow fed from numpy, round it up.
//! Rounding to f32 "to odd" first keeps the information of every dropped bit in the last one
//! (a sticky bit), and f32's 24 bits leave room to round once more exactly (Boldo and
//! Melquiond, "When double rounding is odd", 2005).

use half::{bf16, f16};

/// `value` as f32, rounded to odd: exact when f32 holds it, otherwise whichever neighbour has an
/// odd last mantissa bit.
fn f32_rounded_to_odd(value: f64) -> f32 {
    let nearest = value as f32;
    if !nearest.is_finite() || f64::from(nearest) == value || nearest.to_bits() & 1 == 1 {
        return nearest;
    }
    // The even neighbour was nearest: the odd one is the other neighbour, on `value`'s side.
    // Bits count magnitudes, so one less is toward zero.
    let bits = nearest.to_bits();
    let past_value = f64::from(nearest).abs() > value.abs();
    f32::from_bits(if past_value { bits - 1 } else { bits + 1 })
}

/// The float16 nearest `value` (ties to even).
pub fn f16_from_f64(value: f64) -> f16 {
    f16::from_f32(f32_rounded_to_odd(value))
}

/// The bfloat16 nearest `value` (ties to even).
pub fn bf16_from_f64(value: f64) -> bf16 {
    bf16::from_f32(f32_rounded_to_odd(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_just_past_a_tie_round_away_from_it() {
        let tie = 1.0 + 2f64.powi(-11); // halfway between float16's 1.0 and 1.0009765625
        assert_eq!(f16_from_f64(tie), f16::ONE, "a tie goes to even");
        assert_eq!(f16_from_f64(tie + 1e-15).to_f64(), 1.0 + 2f64.powi(-10));
        assert_eq!(
            f16_from_f64(-(tie + 1e-15)).to_f64(),
            -(1.0 + 2f64.powi(-10))
        );
        assert_eq!(f16_from_f64(tie - 1e-15), f16::ONE);
        let btie = 1.0 + 2f64.powi(-8);
        assert_eq!(bf16_from_f64(btie), bf16::ONE);
        assert_eq!(bf16_from_f64(btie + 1e-15).to_f64(), 1.0 + 2f64.powi(-7));
        // Odd neighbours: ties go up to even.
        let odd = 1.0 + 2f64.powi(-10);
        assert_eq!(
            f16_from_f64(odd + 2f64.powi(-11)).to_f64(),
            1.0 + 2f64.powi(-9)
        );
    }

    #[test]
    fn exact_values_zeros_subnormals_and_the_ends_of_the_range() {
        for exact in [0.0, 1.0, -2.5, 65504.0, 2f64.powi(-24), -(2f64.powi(-14))] {
            assert_eq!(f16_from_f64(exact).to_f64(), exact);
        }
        assert!(f16_from_f64(-0.0).is_sign_negative());
        // Half the smallest subnormal is a tie (to zero); anything above it rounds up.
        assert_eq!(f16_from_f64(2f64.powi(-25)), f16::ZERO);
        assert_eq!(
            f16_from_f64(2f64.powi(-25) * (1.0 + 1e-12)).to_f64(),
            2f64.powi(-24)
        );
        assert_eq!(f16_from_f64(1e-300), f16::ZERO);
        assert_eq!(f16_from_f64(65519.99), f16::MAX);
        assert_eq!(f16_from_f64(65520.0), f16::INFINITY);
        assert_eq!(f16_from_f64(1e300), f16::INFINITY);
        assert_eq!(bf16_from_f64(-1e300), bf16::NEG_INFINITY);
        assert!(f16_from_f64(f64::NAN).is_nan() && bf16_from_f64(f64::NAN).is_nan());
        // Far below f32's subnormals, bfloat16's are still exact through f32.
        let tiny = 2f64.powi(-133); // bfloat16's smallest subnormal
        assert_eq!(bf16_from_f64(tiny).to_f64(), tiny);
        assert_eq!(bf16_from_f64(tiny / 2.0 * (1.0 + 1e-9)).to_f64(), tiny);
    }
}
