"""Example settings files (``configs/`` in a checkout links here), shipped so that an installed
package can name and load them."""
