package com.example;

/** An enum argument and field: hessian2 carries it as an object with one field, name. */
public enum Color {
    RED,
    GREEN,
    BLUE
}
