package com.example;

import java.io.Serializable;

/** A small POJO nested in Shape. */
public class Point implements Serializable {
    public int x;
    public int y;
}
