"""Array type aliases used in signatures (jaxtyping)."""

from jaxtyping import Array, ArrayLike, Float, Int, PyTree

Scalar = Float[Array, ""]
ScalarLike = float | Float[ArrayLike, ""]
Times = Float[Array, " times"]

__all__ = ["Array", "ArrayLike", "Float", "Int", "PyTree", "Scalar", "ScalarLike", "Times"]
