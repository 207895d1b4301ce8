package com.example;

import java.io.Serializable;
import java.math.BigDecimal;
import java.util.Date;
import java.util.List;
import java.util.Map;

/** A POJO with a field of each kind the mesh's JSON arguments must fill. */
public class Shape implements Serializable {
    public int id;
    public long size;
    public String name;
    public double weight;
    public Color color;
    public Date created;
    public List<Object> tags;
    public Point origin;
    public Map<String, Object> extra;
    public BigDecimal price;
}
